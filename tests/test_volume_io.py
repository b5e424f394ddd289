"""Tests for threedgan.volume_io: .npy, .mat and .binvox volume files."""

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from threedgan.volume_io import load_volume, save_volume

V73_MEMBER = "3DShapeNets/volumetric_data/mantel/30/train_feature.mat"
V73_MESSAGE = "MATLAB v7.3"


def make_volume():
    volume = np.zeros((6, 7, 8), dtype=np.uint8)
    volume[1:4, 2:6, 3:7] = 1
    volume[0, 0, 0] = 1  # breaks symmetry so axis mix-ups show
    return volume


def write_binvox(path, dims, occupied_flat_indices):
    """Writes a binvox file by hand, following the published format."""
    size = int(np.prod(dims))
    flat = np.zeros(size, dtype=np.uint8)
    flat[list(occupied_flat_indices)] = 1
    runs = bytearray()
    start = 0
    while start < size:
        end = start
        while end < size and flat[end] == flat[start] and end - start < 255:
            end += 1
        runs += bytes([flat[start], end - start])
        start = end
    header = f"#binvox 1\ndim {dims[0]} {dims[1]} {dims[2]}\ntranslate 0 0 0\nscale 1\ndata\n"
    path.write_bytes(header.encode() + bytes(runs))


def test_npy_round_trip(tmp_path):
    probabilities = np.random.default_rng(0).random((5, 6, 7)).astype(np.float64)
    path = save_volume(probabilities, tmp_path / "a" / "b" / "volume.npy")
    loaded = load_volume(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, probabilities, rtol=1e-6)


def test_npy_channel_axis_is_stripped(tmp_path):
    np.save(tmp_path / "channel.npy", make_volume()[..., None])
    loaded = load_volume(tmp_path / "channel.npy")
    assert loaded.shape == (6, 7, 8)
    assert loaded.dtype == np.uint8


def test_mat_round_trip_uses_instance_key(tmp_path):
    path = save_volume(make_volume().astype(np.float32) * 0.9, tmp_path / "volume.mat")
    contents = scipy.io.loadmat(path)
    assert contents["instance"].dtype == np.uint8
    loaded = load_volume(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, make_volume())


def test_mat_reads_3dshapenets_int8_layout(tmp_path):
    scipy.io.savemat(tmp_path / "chair_1.mat", {"instance": make_volume().astype(np.int8)})
    np.testing.assert_array_equal(load_volume(tmp_path / "chair_1.mat"), make_volume())


def test_mat_without_instance_uses_the_single_3d_array(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"label": np.ones(3), "voxels": make_volume()})
    np.testing.assert_array_equal(load_volume(tmp_path / "other.mat"), make_volume())


def test_binvox_follows_the_format_axis_order(tmp_path):
    # binvox stores index = x * (depth * height) + z * width + y; one voxel
    # at x=1, y=0, z=0 therefore sits at flat index 4 of a 2x2x2 grid.
    path = tmp_path / "one.binvox"
    write_binvox(path, (2, 2, 2), [4])
    volume = load_volume(path)
    assert volume.shape == (2, 2, 2)
    assert volume.dtype == np.uint8
    assert volume[1, 0, 0] == 1
    assert volume.sum() == 1


def test_binvox_written_by_trimesh_round_trips(tmp_path):
    from trimesh.exchange import binvox
    from trimesh.voxel import VoxelGrid

    cube = np.zeros((8, 8, 8), dtype=bool)
    cube[1:4, 2:7, 5:8] = True
    cube[0, 0, 0] = True
    (tmp_path / "cube.binvox").write_bytes(binvox.export_binvox(VoxelGrid(cube)))
    np.testing.assert_array_equal(load_volume(tmp_path / "cube.binvox"), cube.astype(np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_volume(tmp_path / "missing.mat")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "volume.txt"
    path.write_text("0 1 0")
    with pytest.raises(ValueError, match="volume.txt"):
        load_volume(path)
    with pytest.raises(ValueError, match="volume.h5"):
        save_volume(make_volume(), tmp_path / "volume.h5")


def test_no_3d_array(tmp_path):
    scipy.io.savemat(tmp_path / "flat.mat", {"a": np.ones(4), "b": np.ones((2, 2))})
    with pytest.raises(ValueError, match="no 'instance' key and no 3-D array"):
        load_volume(tmp_path / "flat.mat")
    np.save(tmp_path / "flat.npy", np.ones(5))
    with pytest.raises(ValueError, match="expected a 3-D volume"):
        load_volume(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match="expected a 3-D volume"):
        save_volume(np.ones((2, 2)), tmp_path / "flat2.npy")


def test_ambiguous_mat(tmp_path):
    scipy.io.savemat(tmp_path / "two.mat", {"a": make_volume(), "b": make_volume()})
    with pytest.raises(ValueError, match="several 3-D arrays"):
        load_volume(tmp_path / "two.mat")


def test_matlab_v73_file_written_here(tmp_path):
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as file:
        file["instance"] = make_volume()
    # MATLAB v7.3 files are HDF5 with a 128-byte MATLAB header in the user block.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    header += b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as file:
        file.write(header)
    with pytest.raises(ValueError, match=V73_MESSAGE) as raised:
        load_volume(path)
    assert "v73.mat" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_plain_hdf5_with_mat_suffix(tmp_path):
    with h5py.File(tmp_path / "plain.mat", "w") as file:
        file["instance"] = make_volume()
    with pytest.raises(ValueError, match="HDF5"):
        load_volume(tmp_path / "plain.mat")


def test_matlab_v73_file_from_shared_data(tmp_path, shared_zip):
    with zipfile.ZipFile(shared_zip) as archive:
        # The file is written to tmp_path only for the test run.
        path = tmp_path / "train_feature.mat"
        path.write_bytes(archive.read(V73_MEMBER))
    with pytest.raises(ValueError, match=V73_MESSAGE):
        load_volume(path)


@pytest.mark.parametrize("suffix", [".npy", ".mat", ".binvox"])
def test_corrupt_files(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"this is not a volume file " * 8)
    with pytest.raises(ValueError, match=f"corrupt\\{suffix}"):
        load_volume(path)


def test_pickled_npy_is_never_loaded(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        load_volume(tmp_path / "objects.npy")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "whole.npy", np.ones((8, 8, 8), dtype=np.float32))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npy"):
        load_volume(tmp_path / "cut.npy")


def test_training_and_rendering_do_not_need_trimesh():
    """trimesh is for meshes and .binvox only: a GPU box without it must still train and render samples."""
    import subprocess
    import sys

    code = "import sys; sys.modules['trimesh'] = None; import threedgan.train, threedgan.render, threedgan.volume_io"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    assert completed.returncode == 0, completed.stderr[-2000:]
