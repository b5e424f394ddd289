"""Bounded reading of files a user hands us: regular files only, and every decompression capped before it allocates.

Everything the package reads from a user's path goes through these helpers first:

- Only regular files are read. `os.stat` (which resolves symlinks) must say `S_ISREG`; a FIFO, device, socket or a
  symlink to one is refused by name and never opened (a FIFO would block forever, `/dev/zero` never ends).
- Sizes are checked against a cap the caller derives from what the file may hold (a 30³ grid, a 64³ packed sample,
  N samples) before anything is allocated: a file's size, a zip member's declared uncompressed size, an `.npy`
  header's shape times its item size, the inflated size of a compressed MATLAB variable.
- Zip members that are encrypted or use a compression method Python cannot read are one-line errors that name the
  member and the fix.

Each helper raises the `ThreedganError` subclass the caller passes (`DataError`, `ConfigError`, `WeightsError`), with
a one-line message that names the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zipfile
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from threedgan.errors import DataError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

# zipfile reads these methods (bzip2 and LZMA only when Python was built with them).
_SUPPORTED_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
try:
    import bz2  # noqa: F401

    _SUPPORTED_ZIP_METHODS.add(zipfile.ZIP_BZIP2)
except ImportError:  # pragma: no cover - depends on the Python build
    pass
try:
    import lzma  # noqa: F401

    _SUPPORTED_ZIP_METHODS.add(zipfile.ZIP_LZMA)
except ImportError:  # pragma: no cover
    pass
_ZIP_METHOD_NAMES = {
    1: "Shrink", 6: "Implode", 9: "Deflate64", 10: "PKWARE Implode", 12: "bzip2", 14: "LZMA", 18: "IBM TERSE",
    19: "IBM LZ77", 93: "Zstandard", 95: "xz", 96: "JPEG", 97: "WavPack", 98: "PPMd", 99: "AES encryption",
}  # fmt: skip
_READ_CHUNK = 1 << 20


def size_text(count: int) -> str:
    """A byte count for a message: `2.0 GiB`, `640 KiB`, `12 bytes`."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if count >= unit:
            return f"{count / unit:.1f} {name}"
    return f"{count} bytes"


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for a message: `a FIFO (named pipe)`, `a character device`, ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular_file(path, error_class=DataError, what: str = "file", max_bytes: Optional[int] = None) -> int:
    """Checks that `path` (after resolving symlinks) is a regular file of at most `max_bytes`; returns its size.

    Nothing is opened: a FIFO is refused without blocking, a device without reading it.

    Raises:
        error_class: the path is missing, cannot be examined, is not a regular file, or is larger than `max_bytes`.
    """
    path = os.fspath(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise error_class(f"{what} not found: {path}") from None
    except OSError as error:
        raise error_class(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(status.st_mode):
        link = " (through a symlink)" if os.path.islink(path) else ""
        raise error_class(f"{what} {path} is {describe_mode(status.st_mode)}{link}, not a regular file")
    if max_bytes is not None and status.st_size > max_bytes:
        raise error_class(
            f"{what} {path} is too large ({size_text(status.st_size)}; at most {size_text(max_bytes)} expected)"
        )
    return status.st_size


def read_regular_file(path, max_bytes: int, error_class=DataError, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see `check_regular_file`).

    The file is checked with `os.stat` before it is opened, and again through its descriptor after (it might have
    been swapped in between); at most `max_bytes + 1` bytes are ever read.
    """
    path = os.fspath(path)
    check_regular_file(path, error_class, what, max_bytes)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise error_class(f"{path}: cannot read ({error.strerror or error})") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise error_class(f"{what} {path} is not a regular file")
        try:
            content = handle.read(max_bytes + 1)
        except OSError as error:
            raise error_class(f"{path}: cannot read ({error.strerror or error})") from None
    if len(content) > max_bytes:
        raise error_class(f"{what} {path} is too large (more than {size_text(max_bytes)})")
    return content


# ------------------------------------------------------------------------------------------------------------- zip


def check_zip_member(info: zipfile.ZipInfo, archive_path, max_bytes: int, error_class=DataError, what: str = "member"):
    """Refuses, with a message naming the member and the fix, a member that is encrypted, uses a compression
    method zipfile cannot read, or declares more than `max_bytes` uncompressed."""
    if info.flag_bits & 0x1:
        raise error_class(
            f"{archive_path}: {what} {info.filename} is encrypted; extract the archive with its password "
            "(unzip -P ...) and pass the extracted folder instead"
        )
    if info.compress_type not in _SUPPORTED_ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        raise error_class(
            f"{archive_path}: {what} {info.filename} uses compression method {info.compress_type} ({method}), which "
            "Python's zipfile cannot read; extract the archive with a tool that can (7z x ...) and pass the folder, "
            "or re-zip it with deflate"
        )
    if info.file_size > max_bytes:
        raise error_class(
            f"{archive_path}: {what} {info.filename} would decompress to {size_text(info.file_size)}, more than the "
            f"{size_text(max_bytes)} it may hold"
        )


def read_zip_member(archive: zipfile.ZipFile, name: str, archive_path, max_bytes: int, error_class=DataError) -> bytes:
    """A member's bytes, at most `max_bytes` of them, after `check_zip_member`; damaged data is a one-line error."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise error_class(f"{archive_path}: no member {name}") from None
    check_zip_member(info, archive_path, max_bytes, error_class)
    try:
        with archive.open(info) as handle:
            content = handle.read(max_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error) as error:
        raise error_class(f"{archive_path}: cannot read member {name}: {error}".splitlines()[0]) from None
    except Exception as error:  # lzma.LZMAError, bz2's OSError subclasses, ...
        raise error_class(f"{archive_path}: cannot read member {name}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if len(content) > max_bytes:
        raise error_class(f"{archive_path}: member {name} decompresses to more than {size_text(max_bytes)}")
    return content


def open_zip(path, error_class=DataError, what: str = "zip archive") -> zipfile.ZipFile:
    """Opens a regular file as a zip archive (its directory only), or raises `error_class` saying why not."""
    check_regular_file(path, error_class, what)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise error_class(f"{what} {path} is not a readable zip archive ({error})".splitlines()[0]) from None


# ------------------------------------------------------------------------------------------------------- npy / npz


def _read_header(handle) -> Tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    return np.lib.format._read_array_header(handle, version)  # (3, 0): utf-8 field names


def _check_header(handle, name: str, max_bytes: int, available: int, error_class) -> None:
    """Reads an `.npy` header from `handle` and refuses object arrays and arrays larger than `max_bytes` or than
    the `available` bytes after the header."""
    try:
        shape, _, dtype = _read_header(handle)
    except Exception as error:  # ValueError for a bad magic or header, EOFError, SyntaxError, ...
        raise error_class(f"{name}: not a valid .npy array ({error})".splitlines()[0]) from None
    if dtype.hasobject:
        raise error_class(f"{name} holds Python objects, which are never loaded (unpickled)")
    if any(int(side) < 0 for side in shape):
        raise error_class(f"{name}: its header declares a negative shape {shape}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > max_bytes:
        raise error_class(
            f"{name}: its header declares a {dtype} array of shape {tuple(shape)} ({size_text(nbytes)}), more than "
            f"the {size_text(max_bytes)} it may hold"
        )
    if nbytes > available - handle.tell():
        raise error_class(f"{name}: truncated (its header declares {size_text(nbytes)} of data, the file holds less)")


def load_npy(path, max_bytes: int, error_class=DataError, what: str = ".npy file") -> np.ndarray:
    """Loads a regular `.npy` file whose array is at most `max_bytes`, never unpickling anything."""
    path = os.fspath(path)
    size = check_regular_file(path, error_class, what, max_bytes + 64 * KIB)
    try:
        with open(path, "rb") as handle:
            _check_header(handle, path, max_bytes, size, error_class)
            handle.seek(0)
            return np.lib.format.read_array(handle, allow_pickle=False)
    except OSError as error:
        raise error_class(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise error_class(f"{path}: not a valid .npy array ({error})".splitlines()[0]) from None


def list_npz(path, error_class=DataError, what: str = ".npz file") -> List[str]:
    """The array names an `.npz` holds (its zip directory only; nothing is decompressed)."""
    with open_zip(path, error_class, what) as archive:
        return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]


def load_npz(
    path,
    max_member_bytes: int,
    error_class=DataError,
    what: str = ".npz file",
    names: Optional[Iterable[str]] = None,
    max_total_bytes: Optional[int] = None,
    member_limits: Optional[Dict[str, int]] = None,
) -> Dict[str, np.ndarray]:
    """Loads the arrays of an `.npz` (`np.savez` / `np.savez_compressed`), each checked before it is decompressed.

    Args:
        path: the file; it must be a regular file and a zip archive.
        max_member_bytes: the most an array may hold (its header's shape times its item size, and the member's
            declared uncompressed size).
        error_class: the error to raise.
        what: how messages name the file.
        names: load only these arrays (missing ones are simply absent from the result); `None` loads all.
        max_total_bytes: the most all loaded arrays together may hold.
        member_limits: per-array caps that replace `max_member_bytes` for those names.

    Returns:
        name → array.

    Raises:
        error_class: not a regular file or not a zip; an encrypted member or one compressed with a method zipfile
            cannot read; an array larger than its cap, holding Python objects, truncated or damaged.
    """
    path = os.fspath(path)
    member_limits = member_limits or {}
    wanted = None if names is None else set(names)
    arrays, total = {}, 0
    with open_zip(path, error_class, what) as archive:
        infos = [info for info in archive.infolist() if info.filename.endswith(".npy")]
        for info in infos:
            key = info.filename[: -len(".npy")]
            if wanted is not None and key not in wanted:
                continue
            limit = member_limits.get(key, max_member_bytes)
            # The member is the .npy file: its header (at most 64 KiB) and the raw array.
            check_zip_member(info, path, limit + 64 * KIB, error_class, what="array")
            total += info.file_size
            if max_total_bytes is not None and total > max_total_bytes + 64 * KIB * len(infos):
                raise error_class(f"{path}: its arrays would decompress to more than {size_text(max_total_bytes)}")
            label = f"{path}: array {key!r}"
            try:
                with archive.open(info) as handle:
                    _check_header(handle, label, limit, info.file_size, error_class)
                with archive.open(info) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error) as error:
                raise error_class(f"{label} cannot be read ({error})".splitlines()[0]) from None
    return arrays


# ------------------------------------------------------------------------------------------------------------- mat

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_NUMERIC_MAT_CLASSES = {
    "double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
}  # fmt: skip


def check_mat_inflation(content: bytes, name: str, max_bytes: int, error_class=DataError) -> None:
    """Refuses a MATLAB v5 file whose compressed variables inflate to more than `max_bytes` in all.

    Each compressed variable is inflated in 1 MiB pieces that are counted and dropped, so a small file that
    expands to gigabytes costs `max_bytes` of work and no memory. Other files (v4, damaged) pass through for scipy
    to judge.
    """
    if len(content) < 128:
        return
    order = {b"IM": "<", b"MI": ">"}.get(bytes(content[126:128]))
    if order is None:
        return
    position, total = 128, 0
    while position + 8 <= len(content):
        data_type, byte_count = struct.unpack(order + "II", content[position : position + 8])
        start, position = position + 8, position + 8 + byte_count
        if data_type == _MI_COMPRESSED:
            decompressor = zlib.decompressobj()
            pending = bytes(content[start:position])
            try:
                while True:
                    produced = len(decompressor.decompress(pending, _READ_CHUNK))
                    total += produced
                    pending = decompressor.unconsumed_tail
                    if total > max_bytes or (not pending and produced < _READ_CHUNK):
                        break
            except zlib.error:
                return  # damaged: scipy says so in its own words
        elif data_type == _MI_MATRIX:
            total += byte_count + 8
        else:
            return
        if total > max_bytes:
            raise error_class(f"{name}: its variables inflate to more than {size_text(max_bytes)}, more than it may hold")


def mat_variables(content: bytes) -> List[Tuple[str, tuple, str]]:
    """`scipy.io.whosmat` of a file's bytes: (name, shape, MATLAB class) per variable, without reading their data."""
    import scipy.io

    return scipy.io.whosmat(io.BytesIO(content))


def is_numeric_mat_class(class_name: str) -> bool:
    return class_name in _NUMERIC_MAT_CLASSES


# ----------------------------------------------------------------------------------------------- durable writes

_HASH_CHUNK_BYTES = 16 << 20


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str) -> None:
    """Forces a file's data to disk, so a power cut after the rename cannot leave an empty file under a good name."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: str) -> None:
    """Makes a rename inside `path` durable; not every platform or file system can open a folder, hence the guard."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
