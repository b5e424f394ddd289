"""Data: 3DShapeNets volumes from a folder or straight from a zip, validated, bit-packed and cached.

The chapter reads `volumetric_data/<category>/30/{train,test}/*.mat` (key `instance`, 30³ of 0/1), pads each volume
by one voxel to 32³ and zooms it ×2 with nearest-neighbour interpolation to 64³. Holding 64³ float volumes costs
1 MiB each (118,116 files of ModelNet40's train split would need 120 GiB), so volumes are kept bit-packed at 32³
(4 KiB each, 0.5 GB for all of ModelNet40) and expanded to 64³ one batch at a time, on the accelerator when there is
one. Nearest-neighbour zoom ×2 of a 32³ grid is exactly a 2×2×2 repetition of every voxel (scipy ≥ 1.6 semantics;
`tests/test_data.py` checks it against `scipy.ndimage.zoom`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import scipy.io

from threedgan.errors import DataError
from threedgan.safe_io import (
    GIB,
    MIB,
    check_mat_inflation,
    check_regular_file,
    is_numeric_mat_class,
    list_npz,
    load_npz,
    mat_variables,
    read_regular_file,
    read_zip_member,
)

logger = logging.getLogger(__name__)

DATA_URL = "http://3dshapenets.cs.princeton.edu/3DShapeNetsCode.zip"
DATA_ENVIRONMENT_VARIABLE = "THREEDGAN_DATA"
MAT_KEY = "instance"
RAW_SIDE = 30
PADDED_SIDE = 32
CACHE_FORMAT_VERSION = 1
PACKED_ROW_BYTES = PADDED_SIDE**3 // 8
# What one 3DShapeNets .mat may hold: a 30³ grid is 216 KB even as float64, so these leave ample room and refuse a
# file (or a zip member, or a compressed variable) that expands to gigabytes before it is read.
MAX_MAT_FILE_BYTES = 4 * MIB
MAX_MAT_INFLATED_BYTES = 4 * MIB
# A packed slice holds 4 KiB a volume: 1 GiB is 262,144 volumes a category and split (all of ModelNet40's train
# split with its 12 rotations is 118,116), 2 GiB in all.
MAX_PACKED_ARRAY_BYTES = 1 * GIB
MAX_PACKED_SLICE_BYTES = 2 * GIB
MAX_CACHE_BYTES = 4 * GIB

# <anything>/<category>/30/<split>/<model>_<rotation>.mat, the layout of the chapter's archive.
_MEMBER_PATTERN = re.compile(r"^(?P<root>(?:.*/)?)(?P<category>[^/]+)/30/(?P<split>train|test)/(?P<stem>[^/]+)_(?P<rotation>\d+)\.mat$")


@dataclass
class VoxelDataset:
    """Volumes held bit-packed at 32³ (4,096 bytes each), with their file names and category labels.

    Attributes:
        packed: uint8 array (N, 4096), `np.packbits` of the padded 32³ occupancy grids.
        names: file names (N,), for reports.
        labels: int array (N,), index into `category_names`.
        category_names: the categories in label order.
    """

    packed: np.ndarray
    names: np.ndarray
    labels: np.ndarray
    category_names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.packed)

    def volumes32(self, indices=None) -> np.ndarray:
        """Unpacks the selected volumes to uint8 (n, 32, 32, 32) of 0/1."""
        packed = self.packed if indices is None else self.packed[indices]
        return np.unpackbits(packed, axis=1).reshape(-1, PADDED_SIDE, PADDED_SIDE, PADDED_SIDE)

    def volumes64(self, indices=None) -> np.ndarray:
        """Unpacks and zooms the selected volumes to float32 (n, 64, 64, 64, 1), the networks' input."""
        return upsample(self.volumes32(indices))[..., None]

    def subset(self, indices) -> "VoxelDataset":
        indices = np.asarray(indices)
        return VoxelDataset(self.packed[indices], self.names[indices], self.labels[indices], list(self.category_names))


def upsample(volumes32, dtype="float32"):
    """Zooms (n, 32, 32, 32) 0/1 grids ×2 by voxel repetition (nearest neighbour, as the chapter's `scipy.ndimage.zoom`).

    Args:
        volumes32: a NumPy array, or a backend tensor inside the compiled training step (where the ×8 larger 64³ batch
            is made on the accelerator instead of being sent to it).
        dtype: the result's dtype (`"uint8"` keeps reference sets 4× smaller than float32).

    Returns:
        (n, 64, 64, 64) of the same kind as the input: NumPy in, NumPy out.
    """
    import keras

    if isinstance(volumes32, np.ndarray):
        volumes, repeat = volumes32.astype(dtype), np.repeat
    else:
        volumes, repeat = keras.ops.cast(volumes32, dtype), keras.ops.repeat
    for axis in (1, 2, 3):
        volumes = repeat(volumes, 2, axis=axis)
    return volumes


def unpack_and_upsample(packed, dtype="float32"):
    """Bit-packed (n, 4096) uint8 rows, as `VoxelDataset.packed` holds them, to (n, 64, 64, 64, 1) volumes.

    Written with `keras.ops` so it runs inside the compiled step: the data set stays on the accelerator at 4 KiB a
    volume and each batch is expanded ×256 there.
    """
    import keras

    # np.packbits is big-endian within a byte: the first voxel is the most significant bit.
    # Constants made on the device (`arange`, `ones_like`): on PyTorch, converting host values copies them to the GPU
    # and waits for it to finish all queued work.
    shifts = keras.ops.cast(keras.ops.arange(7, -1, -1, dtype="int32"), "uint8")  # TensorFlow has no uint8 range
    shifted = keras.ops.right_shift(keras.ops.expand_dims(packed, -1), shifts)
    bits = keras.ops.bitwise_and(shifted, keras.ops.ones_like(shifted))
    return keras.ops.expand_dims(upsample(keras.ops.reshape(bits, (-1, PADDED_SIDE, PADDED_SIDE, PADDED_SIDE)), dtype), -1)


# ----------------------------------------------------------------------------------------------------------- sources


class _Source:
    """A place holding `<category>/30/<split>/*.mat`: a folder or a zip archive."""

    def __init__(self, path: str):
        self.path = path
        self.members = {}  # (category, split) -> list of (relative name, stem, rotation)

    def categories(self) -> List[str]:
        return sorted({category for category, _ in self.members})

    def files(self, category: str, split: str) -> list:
        return self.members.get((category, split), [])

    def _add(self, relative_name: str) -> None:
        match = _MEMBER_PATTERN.match(relative_name)
        if match:
            key = (match["category"], match["split"])
            self.members.setdefault(key, []).append((relative_name, match["stem"], int(match["rotation"])))


class _FolderSource(_Source):
    def __init__(self, root: str):
        super().__init__(root)
        for category in sorted(os.listdir(root)):
            for split in ("train", "test"):
                folder = os.path.join(root, category, "30", split)
                if os.path.isdir(folder):
                    for name in os.listdir(folder):
                        self._add(f"{category}/30/{split}/{name}")

    def fingerprint(self, relative_names: Sequence[str]) -> list:
        stats = [os.stat(os.path.join(self.path, name)) for name in relative_names]
        digest = hashlib.sha256()
        for name, stat in zip(relative_names, stats):
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return [os.path.abspath(self.path), digest.hexdigest()]

    def read(self, relative_name: str) -> bytes:
        path = os.path.join(self.path, relative_name)
        if os.path.isdir(path):
            raise DataError(f"{path}: cannot read (Is a directory)")
        # Regular files only (a FIFO would block, a symlink to /dev/zero never end), and no larger than a .mat may be.
        return read_regular_file(path, MAX_MAT_FILE_BYTES, DataError, what=".mat file")

    def close(self) -> None:
        pass


class _ZipSource(_Source):
    def __init__(self, path: str):
        super().__init__(path)
        try:
            self.archive = zipfile.ZipFile(path)
            names = self.archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
            raise DataError(f"cannot read zip archive {path}: {error}") from None
        for name in names:
            # Members are only ever read into memory, never extracted; still refuse archives that try to escape.
            if name.startswith("/") or ".." in name.split("/") or re.match(r"^[A-Za-z]:", name):
                raise DataError(f"zip archive {path} holds an unsafe member path {name!r}")
            self._add(name)

    def fingerprint(self, relative_names: Sequence[str]) -> list:
        stat = os.stat(self.path)
        return [os.path.abspath(self.path), stat.st_size, stat.st_mtime_ns]

    def read(self, relative_name: str) -> bytes:
        # Encrypted members, compression methods zipfile lacks and members declaring more than a .mat may hold are
        # refused before anything is decompressed.
        return read_zip_member(self.archive, relative_name, self.path, MAX_MAT_FILE_BYTES, DataError)

    def close(self) -> None:
        self.archive.close()


def _find_volumetric_root(folder: str, max_depth: int = 4) -> Optional[str]:
    """The folder whose children are categories (`<category>/30/`), at or below `folder`."""
    for current, subfolders, _ in os.walk(folder):
        if current[len(folder) :].count(os.sep) > max_depth:
            subfolders[:] = []
            continue
        if any(os.path.isdir(os.path.join(current, sub, "30")) for sub in subfolders):
            return current
        subfolders.sort(key=lambda name: name != "volumetric_data")
    return None


def resolve_data_path(data_dir: Optional[str]) -> str:
    """The data location to use: the argument, else `$THREEDGAN_DATA`, else the chapter's archive, downloaded.

    Raises:
        DataError: an empty path was given (`--data-dir ""` must not quietly mean "download"), or nothing was given
            and the download failed (the message says what to download and which flag to pass).
    """
    if data_dir is not None:
        if not str(data_dir).strip():
            raise DataError("the data path is empty; pass --data-dir PATH, or leave the flag out to use the default")
        return data_dir
    if os.environ.get(DATA_ENVIRONMENT_VARIABLE):
        return os.environ[DATA_ENVIRONMENT_VARIABLE]
    import keras

    try:
        return keras.utils.get_file("3DShapeNetsCode.zip", origin=DATA_URL)
    except Exception as error:  # get_file raises bare Exception subclasses for network failures
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"no data: could not download {DATA_URL} ({reason}); download it by hand and pass "
            f"--data-dir /path/to/3DShapeNetsCode.zip (or set {DATA_ENVIRONMENT_VARIABLE})"
        ) from None


def open_source(path: str) -> _Source:
    """Opens a `volumetric_data` folder, a folder above it, or a zip archive holding it.

    Raises:
        DataError: the path is missing, or holds no `<category>/30/{train,test}/*.mat` files.
    """
    if not os.path.exists(path):
        raise DataError(f"data path not found: {path}")
    if not os.path.isdir(path):
        # A FIFO, a device or a symlink to one is refused here, before anything opens it.
        check_regular_file(path, DataError, what="data path")
    if os.path.isdir(path):
        root = _find_volumetric_root(path)
        if root is None:
            raise DataError(
                f"no 3DShapeNets volumes (<category>/30/train/*.mat) found under {path}, "
                "nor mesh or .binvox files (.obj .off .stl .ply .glb .binvox)"
            )
        source = _FolderSource(root)
    else:
        try:
            # zipfile.is_zipfile answers False for a file it cannot open; say why instead.
            with open(path, "rb"):
                pass
        except OSError as error:
            raise DataError(f"cannot read data path {path}: {error.strerror or error}") from None
        if zipfile.is_zipfile(path):
            source = _ZipSource(path)
        elif path.lower().endswith(".zip"):
            raise DataError(f"data path {path} is not a readable zip archive (damaged or truncated?)")
        else:
            raise DataError(f"data path is neither a folder nor a zip archive: {path}")
    if not source.members:
        source.close()
        raise DataError(f"no 3DShapeNets volumes (<category>/30/train/*.mat) found in {path}")
    return source


def list_categories(data_dir: Optional[str] = None) -> List[str]:
    """The category names available at a data location."""
    path = resolve_data_path(data_dir)
    if os.path.isdir(path) and _find_volumetric_root(path) is None:
        from threedgan import mesh_data

        if mesh_data.holds_shapes(path):
            return sorted({category for category, _ in mesh_data.list_shapes(path)})
    source = open_source(path)
    try:
        return source.categories()
    finally:
        source.close()


# -------------------------------------------------------------------------------------------------------- parsing


def parse_mat(content: bytes, name: str) -> np.ndarray:
    """Reads one 3DShapeNets `.mat` file's `instance` grid and pads it to 32³.

    Args:
        content: the file's bytes.
        name: the file's name, for error messages.

    Returns:
        bool array (32, 32, 32).

    Raises:
        DataError: MATLAB v7.3 (HDF5) file, unreadable or truncated file, missing `instance` key, wrong shape, or
            values other than 0 and 1.
    """
    if content[:8] == b"\x89HDF\r\n\x1a\n" or b"MATLAB 7.3" in content[:128]:
        raise DataError(f"{name}: MATLAB v7.3 (HDF5) file, not a 3DShapeNets volume (expected a MATLAB v5 file with '{MAT_KEY}')")
    # Bounded before scipy allocates anything: compressed variables may not inflate past what a volume file holds,
    # and `instance` must be declared as a 30³ numeric array before its data is read.
    check_mat_inflation(content, name, MAX_MAT_INFLATED_BYTES, DataError)
    try:
        variables = {variable[0]: variable for variable in mat_variables(content)}
    except NotImplementedError:
        raise DataError(f"{name}: MATLAB v7.3 (HDF5) file, not a 3DShapeNets volume") from None
    except Exception as error:  # scipy raises ValueError, TypeError, zlib.error, ... on damaged files
        raise DataError(f"{name}: cannot read .mat file ({type(error).__name__}: {error})".splitlines()[0]) from None
    if MAT_KEY not in variables:
        keys = ", ".join(sorted(k for k in variables if not k.startswith("__"))) or "none"
        raise DataError(f"{name}: no '{MAT_KEY}' array in the file (keys: {keys})")
    _, declared_shape, class_name = variables[MAT_KEY]
    if not is_numeric_mat_class(class_name):
        raise DataError(f"{name}: '{MAT_KEY}' is a MATLAB {class_name}, expected numbers 0/1")
    if tuple(declared_shape) != (RAW_SIDE,) * 3:
        raise DataError(f"{name}: '{MAT_KEY}' has shape {tuple(declared_shape)}, expected {(RAW_SIDE,) * 3}")
    try:
        contents = scipy.io.loadmat(io.BytesIO(content), variable_names=[MAT_KEY])
    except NotImplementedError:
        raise DataError(f"{name}: MATLAB v7.3 (HDF5) file, not a 3DShapeNets volume") from None
    except Exception as error:  # scipy raises ValueError, TypeError, zlib.error, ... on damaged files
        raise DataError(f"{name}: cannot read .mat file ({type(error).__name__}: {error})".splitlines()[0]) from None
    if MAT_KEY not in contents:
        raise DataError(f"{name}: no '{MAT_KEY}' array in the file")
    grid = np.asarray(contents[MAT_KEY])
    if grid.shape != (RAW_SIDE,) * 3:
        raise DataError(f"{name}: '{MAT_KEY}' has shape {grid.shape}, expected {(RAW_SIDE,) * 3}")
    if not np.issubdtype(grid.dtype, np.number) and grid.dtype != bool:
        raise DataError(f"{name}: '{MAT_KEY}' has dtype {grid.dtype}, expected numbers 0/1")
    if not np.all((grid == 0) | (grid == 1)):
        raise DataError(f"{name}: '{MAT_KEY}' holds values other than 0 and 1 (min {grid.min()}, max {grid.max()})")
    return np.pad(grid.astype(bool), 1)


# --------------------------------------------------------------------------------------------------------- loading


def choose_categories(available: Sequence[str], categories: Sequence[str], where) -> List[str]:
    """The categories asked for, `["all"]` meaning every one `available` in `where` (a path, for the message).

    Raises:
        DataError: a category that `where` does not hold.
    """
    if list(categories) == ["all"]:
        return list(available)
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DataError(f"unknown category {unknown[0]!r} in {where}; available: {', '.join(available)}")
    return list(categories)


def _select(source: _Source, categories: Sequence[str], split: str, rotations: str, obj_ratio: float, max_samples):
    categories = choose_categories(source.categories(), categories, source.path)
    selected, labels = [], []
    for label, category in enumerate(categories):
        files = sorted(source.files(category, split))
        if rotations == "canonical":
            files = [f for f in files if f[2] == 1]
        files = files[: int(obj_ratio * len(files))]
        if not files:
            raise DataError(f"no .mat files for category {category!r}, split {split!r}, rotations {rotations!r} in {source.path}")
        selected += [f[0] for f in files]
        labels += [label] * len(files)
    if max_samples is not None and max_samples < len(selected):
        # Evenly spaced, so a small slice still spans categories, models and rotations.
        keep = np.linspace(0, len(selected) - 1, max_samples).round().astype(int)
        selected = [selected[i] for i in keep]
        labels = [labels[i] for i in keep]
    return list(categories), selected, np.asarray(labels, dtype=np.int32)


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "threedgan")


def load_dataset(
    data_dir: Optional[str] = None,
    categories: Sequence[str] = ("chair",),
    split: str = "train",
    rotations: str = "all",
    obj_ratio: float = 1.0,
    max_samples: Optional[int] = None,
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
    mesh_margin: float = 3.0,
    mesh_aspect: str = "keep",
    mesh_up_axis: str = "z",
    skip_bad: bool = False,
) -> VoxelDataset:
    """Loads 3DShapeNets volumes, from the cache when the same selection of the same source was parsed before.

    A folder of meshes / `.binvox` files (and no 3DShapeNets volumes) is voxelised by `threedgan.mesh_data`
    instead, with the `mesh_*` options and `skip_bad`; `rotations` does not apply to it.

    Args:
        data_dir: a `volumetric_data` folder, a folder above it, or a zip archive; `None` see `resolve_data_path`.
        categories: category names, or `["all"]`.
        split: `"train"` or `"test"`.
        rotations: `"all"` or `"canonical"` (`_1` only).
        obj_ratio: fraction of each category's sorted files to keep.
        max_samples: keep at most this many, evenly spaced over the selection.
        cache_dir: where parsed selections are cached (default `~/.cache/threedgan`).
        use_cache: read and write the cache.
        mesh_margin, mesh_aspect, mesh_up_axis, skip_bad: for mesh folders, see `threedgan.mesh_data`.

    Returns:
        A `VoxelDataset`.

    Raises:
        DataError: see `open_source`, `parse_mat`; unknown categories (the message lists the available ones).
    """
    path = resolve_data_path(data_dir)
    if path.endswith(".npz") and os.path.isfile(path):
        return _load_packed_slice(path, categories, split, rotations, obj_ratio, max_samples)
    if os.path.isdir(path) and _find_volumetric_root(path) is None:
        from threedgan import mesh_data

        if mesh_data.holds_shapes(path):
            options = mesh_data.VoxeliseOptions(mesh_margin, mesh_aspect, mesh_up_axis)
            return mesh_data.load_shape_dataset(
                path, categories, split, obj_ratio, max_samples, cache_dir, use_cache, options, skip_bad
            )
    cache_folder = cache_dir or default_cache_dir()
    selection = [list(categories), split, rotations, obj_ratio, max_samples]
    if use_cache and os.path.isfile(path):
        # An archive's size and time stamp identify it, so a cached selection is found without listing 100k members.
        stat = os.stat(path)
        quick_key = _cache_key([os.path.abspath(path), stat.st_size, stat.st_mtime_ns], selection)
        dataset = _read_cache(os.path.join(cache_folder, f"volumes-{quick_key}.npz"))
        if dataset is not None:
            return dataset
    source = open_source(path)
    try:
        category_names, selected, labels = _select(source, categories, split, rotations, obj_ratio, max_samples)
        if isinstance(source, _ZipSource):
            key = quick_key if use_cache else None
        else:
            key = _cache_key(source.fingerprint(selected), selection)
        cache_path = os.path.join(cache_folder, f"volumes-{key}.npz")
        if use_cache and not isinstance(source, _ZipSource):
            dataset = _read_cache(cache_path)
            if dataset is not None:
                return dataset
        start = time.perf_counter()
        packed = np.empty((len(selected), PADDED_SIDE**3 // 8), dtype=np.uint8)
        for index, name in enumerate(selected):
            packed[index] = np.packbits(parse_mat(source.read(name), name))
        names = np.array([os.path.basename(name) for name in selected])
        logger.info("parsed %d volumes from %s in %.1f s", len(selected), path, time.perf_counter() - start)
    finally:
        source.close()
    dataset = VoxelDataset(packed, names, labels, category_names)
    if use_cache:
        write_cache(cache_path, dataset)
    return dataset


def _load_packed_slice(path, categories, split, rotations, obj_ratio, max_samples) -> VoxelDataset:
    """Reads a slice made by `scripts/pack_slice.py`: keys `<category>_<split>` (n, 4096) and `..._names`.

    Such a file carries a few categories to a machine without the archive (the GPU machine) in a few MB.
    """
    files = list_npz(path, DataError, what="packed slice")
    available = sorted(key[: -len(f"_{split}")] for key in files if key.endswith(f"_{split}"))
    if list(categories) == ["all"]:
        categories = available
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DataError(f"unknown category {unknown[0]!r} for split {split!r} in {path}; available: {', '.join(available)}")
    # Only the arrays asked for are decompressed, each checked against what a slice may hold first.
    wanted = [f"{category}_{split}{suffix}" for category in categories for suffix in ("", "_names")]
    archive = load_npz(
        path, MAX_PACKED_ARRAY_BYTES, DataError, what="packed slice", names=wanted, max_total_bytes=MAX_PACKED_SLICE_BYTES
    )
    packed, names, labels = [], [], []
    for label, category in enumerate(categories):
        rows, row_names = _packed_slice_arrays(archive, path, f"{category}_{split}")
        order = np.argsort(row_names)
        if rotations == "canonical":
            # `_1.mat`, or `_1.off` etc. in slices made from meshes by scripts/voxelize.py
            order = [i for i in order if os.path.splitext(str(row_names[i]))[0].endswith("_1")]
        order = order[: int(obj_ratio * len(order))]
        if len(order) == 0:
            raise DataError(f"no volumes for category {category!r}, split {split!r}, rotations {rotations!r} in {path}")
        packed.append(rows[order])
        names.append(row_names[order])
        labels.append(np.full(len(order), label, dtype=np.int32))
    dataset = VoxelDataset(np.concatenate(packed), np.concatenate(names), np.concatenate(labels), list(categories))
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.subset(np.linspace(0, len(dataset) - 1, max_samples).round().astype(int))
    return dataset


def _packed_slice_arrays(arrays: dict, path: str, key: str):
    """A packed slice's rows and names for one `<category>_<split>`, checked: uint8 rows of 4096 bytes, one string
    name a row."""
    if f"{key}_names" not in arrays:
        raise DataError(f"packed slice {path} has {key} but no {key}_names array")
    rows, row_names = arrays[key], arrays[f"{key}_names"]
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != PACKED_ROW_BYTES:
        raise DataError(
            f"packed slice {path}: {key} is a {rows.dtype} array of shape {rows.shape}, expected uint8 rows of "
            f"{PACKED_ROW_BYTES} bytes (bit-packed 32³ volumes)"
        )
    if row_names.ndim != 1 or row_names.dtype.kind not in "US":
        raise DataError(f"packed slice {path}: {key}_names is a {row_names.dtype} array of shape {row_names.shape}, expected strings")
    if len(row_names) != len(rows):
        raise DataError(f"packed slice {path}: {key} has {len(rows)} rows but {key}_names {len(row_names)} names")
    return rows, row_names


def _cache_key(source_fingerprint, selection) -> str:
    fields = [CACHE_FORMAT_VERSION, source_fingerprint, selection]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:24]


def _read_cache(cache_path: str) -> Optional[VoxelDataset]:
    if not os.path.exists(cache_path):
        return None
    try:
        # Bounded like any other file: a cache folder is a path the user chose, and may hold anything.
        cached = load_npz(cache_path, MAX_CACHE_BYTES, DataError, what="cache")
        dataset = VoxelDataset(cached["packed"], cached["names"], cached["labels"], [str(c) for c in cached["category_names"]])
        if dataset.packed.dtype != np.uint8 or dataset.packed.ndim != 2 or dataset.packed.shape[1] != PACKED_ROW_BYTES:
            raise DataError(f"packed volumes of shape {dataset.packed.shape}")
        logger.info("loaded %d volumes from cache %s", len(dataset), cache_path)
        return dataset
    except Exception as error:  # a damaged cache is rebuilt, never trusted
        logger.warning("ignoring unreadable cache %s (%s)", cache_path, error)
        return None


def write_cache(cache_path: str, dataset: VoxelDataset, **extra_arrays) -> None:
    """Writes a parsed data set (and any `extra_arrays`) to `cache_path` atomically; a failure only warns.

    A reader sees the old file or the whole new one; a read-only cache folder must not stop training.
    """
    temporary = f"{cache_path}.{os.getpid()}.tmp.npz"
    try:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        np.savez(
            temporary,
            packed=dataset.packed,
            names=dataset.names,
            labels=dataset.labels,
            category_names=np.array(dataset.category_names),
            **extra_arrays,
        )
        os.replace(temporary, cache_path)
    except OSError as error:
        logger.warning("could not write cache %s (%s)", cache_path, error)
        if os.path.exists(temporary):
            os.remove(temporary)


def load_config_dataset(config, split: Optional[str] = None, rotations: Optional[str] = None, **overrides) -> VoxelDataset:
    """`load_dataset` with the data fields of a `Config` (split/rotations/other fields overridable)."""
    arguments = dict(
        data_dir=config.data_dir,
        categories=config.categories,
        split=split or config.split,
        rotations=rotations or config.rotations,
        obj_ratio=config.obj_ratio,
        max_samples=config.max_samples,
        cache_dir=config.cache_dir,
        mesh_margin=config.mesh_margin,
        mesh_aspect=config.mesh_aspect,
        mesh_up_axis=config.mesh_up_axis,
        skip_bad=config.skip_bad,
    )
    arguments.update(overrides)
    return load_dataset(**arguments)
