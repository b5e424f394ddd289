"""Reads and writes single voxel volumes as `.npy`, `.mat` and `.binvox` files.

`.mat` files follow 3DShapeNets: the volume lives under the key `instance`
as a 0/1 array indexed `[x, y, z]` with z up. `.binvox` files are decoded
with trimesh into `[x, y, z]` order as well, but keep whatever up axis the
source model had (ShapeNet models voxelised with binvox are usually y up).
"""

import io
from pathlib import Path

import numpy as np
import scipy.io

from threedgan.safe_io import MIB, check_mat_inflation, check_regular_file, is_numeric_mat_class, load_npy, mat_variables

VOLUME_SUFFIXES = (".npy", ".mat", ".binvox")
SAVE_SUFFIXES = (".npy", ".mat")
# The largest volume read: a 256³ grid (ShapeNet's finest common .binvox), 128 MiB even as float64. Files, headers
# and compressed variables that declare more are refused before anything is allocated.
MAX_VOLUME_VOXELS = 256**3
MAX_VOLUME_BYTES = MAX_VOLUME_VOXELS * 8
MAX_VOLUME_FILE_BYTES = MAX_VOLUME_BYTES + MIB
# Compressed .mat variables inflate to at most this in all (a 128³ double grid is 16 MiB, 256³ logical the same):
# scipy inflates a compressed variable's header in blocks that can hold most of it, so this also bounds its memory.
MAX_MAT_INFLATED_BYTES = 40 * MIB


def load_volume(path):
    """Loads one 3-D voxel volume from a `.npy`, `.mat` or `.binvox` file.

    Pickled objects are never loaded, so untrusted `.npy` files are safe.

    Args:
        path: File to read. `.mat` files must be MATLAB v4-v7.2; the
            volume is read from the key `instance` (3DShapeNets layout),
            or else from the only 3-D array in the file.

    Returns:
        A 3-D array: `uint8` for boolean or integer 0-255 data, else
        `float32`. A trailing channel axis of size 1 is removed.

    Raises:
        FileNotFoundError: If `path` does not exist or is not a file.
        ValueError: If the suffix is unknown, the file is corrupt or is a
            MATLAB v7.3 (HDF5) file, or it holds no 3-D volume.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Volume file not found: {path}")
    # Regular files only (never a FIFO or a device, even through a symlink), and no larger than a volume may be.
    check_regular_file(path, ValueError, what="volume file", max_bytes=MAX_VOLUME_FILE_BYTES)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        volume = _load_npy(path)
    elif suffix == ".mat":
        volume = _load_mat(path)
    elif suffix == ".binvox":
        volume = _load_binvox(path)
    else:
        raise ValueError(
            f"Unsupported volume file type for {path}: use one of {', '.join(VOLUME_SUFFIXES)}."
        )
    return _as_volume(volume, path)


def save_volume(volume, path, threshold=0.5):
    """Saves one 3-D voxel volume as `.npy` or `.mat`, creating the parent folder.

    Args:
        volume: Array of shape `(D, H, W)` or `(D, H, W, 1)`.
        path: Destination; `.npy` keeps the values (as `float32`, or
            `uint8` for boolean/byte data), `.mat` stores a 0/1 `uint8`
            array under the key `instance`, like 3DShapeNets.
        threshold: For `.mat` only: non-binary volumes are binarised as
            `volume > threshold`.

    Returns:
        The destination as a `pathlib.Path`.

    Raises:
        ValueError: If the suffix is not `.npy` or `.mat`, or `volume` is
            not 3-D.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(
            f"Unsupported volume file type for {path}: use one of {', '.join(SAVE_SUFFIXES)}."
        )
    volume = _as_volume(np.asarray(volume), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, volume, allow_pickle=False)
    else:
        if volume.dtype != np.uint8 or volume.max(initial=0) > 1:
            volume = (volume > threshold).astype(np.uint8)
        scipy.io.savemat(path, {"instance": volume}, do_compression=True)
    return path


def _load_npy(path):
    # np.load falls back to unpickling files without the .npy magic, which
    # would report any corrupt file as "pickled"; check the magic first.
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise ValueError(f"Cannot read {path}: not a valid .npy file (missing the NUMPY header).")
    try:
        # The header's shape is checked against the cap and the file's size before the array is allocated.
        return load_npy(path, MAX_VOLUME_BYTES, ValueError, what="volume file")
    except ValueError as error:
        if "Python objects" in str(error):
            raise ValueError(f"{path} holds pickled Python objects, which are never loaded.") from None
        raise
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read {path}: not a valid .npy file ({error}).") from None


def _load_mat(path):
    content = path.read_bytes()  # at most MAX_VOLUME_FILE_BYTES: checked by load_volume
    # Compressed variables may not inflate past what a volume holds; variables declared larger are never read.
    check_mat_inflation(content, str(path), MAX_MAT_INFLATED_BYTES, ValueError)
    try:
        variables = mat_variables(content)
        readable = [
            name for name, shape, class_name in variables
            if is_numeric_mat_class(class_name) and np.prod(shape, dtype=np.float64) <= MAX_VOLUME_VOXELS
        ]
        too_large = [name for name, shape, _ in variables if np.prod(shape, dtype=np.float64) > MAX_VOLUME_VOXELS]
        if "instance" in too_large:
            raise ValueError(f"{path}: 'instance' is larger than {MAX_VOLUME_VOXELS:,} voxels (256³)")
        contents = scipy.io.loadmat(io.BytesIO(content), variable_names=readable) if readable else {}
    except NotImplementedError:
        # scipy cannot read v7.3 files, which are HDF5 underneath.
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which is not supported: "
            "re-save it with save(..., '-v7') or read it with h5py."
        ) from None
    except Exception as error:  # scipy raises many types for corrupt files.
        if isinstance(error, ValueError) and str(error).startswith(f"{path}: 'instance' is larger"):
            raise
        if _starts_with_hdf5_signature(path):
            raise ValueError(
                f"{path} is an HDF5 file (MATLAB v7.3 style), which is not supported: "
                "re-save it with save(..., '-v7') or read it with h5py."
            ) from None
        raise ValueError(f"Cannot read {path}: not a valid .mat file ({error}).") from None
    if "instance" in contents:
        return contents["instance"]
    candidates = {
        key: value for key, value in contents.items()
        if not key.startswith("__") and isinstance(value, np.ndarray) and _is_volume(value)
    }
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    variables = sorted(key for key in contents if not key.startswith("__"))
    if not candidates:
        raise ValueError(f"{path} has no 'instance' key and no 3-D array (variables: {variables}).")
    raise ValueError(
        f"{path} has no 'instance' key and several 3-D arrays ({sorted(candidates)}); cannot tell which is the volume."
    )


def _load_binvox(path):
    # Imported here: training renders samples through this module and should not need trimesh.
    from trimesh.exchange import binvox

    try:
        with open(path, "rb") as file:
            parsed = binvox.parse_binvox(file, writeable=True)
        shape = tuple(int(side) for side in parsed.shape)
    except Exception as error:  # Header and run-length errors vary in type.
        raise ValueError(f"Cannot read {path}: not a valid .binvox file ({error}).") from None
    # Checked before decoding: the run-length data of a huge grid is small, its expansion is not.
    if len(shape) != 3 or min(shape) < 1 or np.prod(shape, dtype=np.float64) > MAX_VOLUME_VOXELS:
        raise ValueError(f"{path}: .binvox grid {shape} is too large or malformed (at most {MAX_VOLUME_VOXELS:,} voxels, 256³)")
    try:
        grid = binvox.voxel_from_binvox(parsed.rle_data, parsed.shape, parsed.translate, parsed.scale)
        return np.asarray(grid.matrix)
    except Exception as error:  # Header and run-length errors vary in type.
        raise ValueError(f"Cannot read {path}: not a valid .binvox file ({error}).") from None


def _starts_with_hdf5_signature(path):
    with open(path, "rb") as file:
        return file.read(8) == b"\x89HDF\r\n\x1a\n"


def as_3d_volume(volume) -> np.ndarray:
    """Returns one volume as a (D, H, W) array, dropping a trailing channel axis of size 1.

    Raises:
        ValueError: the array is neither (D, H, W) nor (D, H, W, 1).
    """
    volume = np.asarray(volume)
    if volume.ndim == 4 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ValueError(f"Expected a volume of shape (D, H, W) or (D, H, W, 1), got shape {volume.shape}.")
    return volume


def _is_volume(array) -> bool:
    try:
        as_3d_volume(array)
    except ValueError:
        return False
    return True


def _as_volume(array, path):
    try:
        array = as_3d_volume(array)
    except ValueError:
        raise ValueError(f"{path}: expected a 3-D volume, got an array of shape {np.shape(array)}.") from None
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        if array.size == 0 or (array.min() >= 0 and array.max() <= 255):
            return array.astype(np.uint8)
        return array.astype(np.float32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise ValueError(f"{path}: expected a numeric volume, got dtype {array.dtype}.")
