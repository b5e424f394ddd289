import io
import os
import zipfile

import numpy as np
import pytest
import scipy.io
import scipy.ndimage

from tests.conftest import solid_box, write_tree, zip_tree
from threedgan import data
from threedgan.errors import DataError


def load(path, tmp_path, **options):
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    return data.load_dataset(path, **options)


def test_upsample_equals_the_chapters_zoom():
    rng = np.random.default_rng(1)
    grid = (rng.random((30, 30, 30)) > 0.8).astype(np.uint8)
    padded = np.pad(grid, 1)
    chapter = scipy.ndimage.zoom(padded, (2, 2, 2), mode="constant", order=0)
    ours = data.upsample(padded[None])
    assert ours.shape == (1, 64, 64, 64) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0], chapter)
    assert data.upsample(padded[None], "uint8").dtype == np.uint8


def test_keras_upsample_matches_numpy():
    rng = np.random.default_rng(2)
    volumes = (rng.random((2, 32, 32, 32)) > 0.5).astype(np.uint8)
    import keras

    tensor = data.upsample(keras.ops.convert_to_tensor(volumes))
    assert not isinstance(tensor, np.ndarray), "a tensor in gives a tensor out (inside the compiled step)"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tensor), data.upsample(volumes))


def test_folder_zip_and_parent_folder_give_the_same_volumes(tmp_path, volumetric_dir, volumetric_zip):
    from_folder = load(volumetric_dir, tmp_path, categories=["chair"])
    from_parent = load(os.path.dirname(volumetric_dir), tmp_path, categories=["chair"], use_cache=False)
    from_zip = load(volumetric_zip, tmp_path, categories=["chair"])
    assert len(from_folder) == 3 * 2
    np.testing.assert_array_equal(from_folder.packed, from_zip.packed)
    np.testing.assert_array_equal(from_folder.packed, from_parent.packed)
    assert list(from_zip.names) == sorted(from_zip.names)


def test_volumes_are_padded_and_bit_packed(tmp_path, volumetric_dir):
    dataset = load(volumetric_dir, tmp_path, categories=["chair"], split="test")
    name = dataset.names[0]
    original = scipy.io.loadmat(os.path.join(volumetric_dir, "chair", "30", "test", name))["instance"]
    assert dataset.packed.shape == (6, 4096) and dataset.packed.dtype == np.uint8
    np.testing.assert_array_equal(dataset.volumes32([0])[0], np.pad(original, 1))
    assert dataset.volumes64([0]).shape == (1, 64, 64, 64, 1)


def test_selection_options(tmp_path, volumetric_dir):
    canonical = load(volumetric_dir, tmp_path, categories=["chair"], rotations="canonical")
    assert len(canonical) == 3 and all(n.endswith("_1.mat") for n in canonical.names)
    both = load(volumetric_dir, tmp_path, categories=["chair", "table"])
    assert len(both) == 12 and both.category_names == ["chair", "table"] and set(both.labels) == {0, 1}
    everything = load(volumetric_dir, tmp_path, categories=["all"])
    assert everything.category_names == ["chair", "table"] and len(everything) == 12
    half = load(volumetric_dir, tmp_path, categories=["chair"], obj_ratio=0.5)
    assert len(half) == 3
    few = load(volumetric_dir, tmp_path, categories=["chair", "table"], max_samples=4)
    assert len(few) == 4 and set(few.labels) == {0, 1}, "max_samples spreads over the categories"


def test_second_load_comes_from_the_cache_and_a_changed_source_invalidates_it(tmp_path, volumetric_dir, volumetric_zip):
    cache = tmp_path / "cache"
    first = load(volumetric_zip, tmp_path, categories=["chair"])
    assert len(list(cache.glob("*.npz"))) == 1
    again = load(volumetric_zip, tmp_path, categories=["chair"])
    np.testing.assert_array_equal(first.packed, again.packed)
    # Rewrite the archive with one volume changed: the cache must not answer for it.
    changed_dir = write_tree(str(tmp_path / "changed"), categories={"chair": 5})
    zip_tree(changed_dir, volumetric_zip)
    os.utime(volumetric_zip, ns=(1, 10**18))
    rebuilt = load(volumetric_zip, tmp_path, categories=["chair"])
    assert not np.array_equal(rebuilt.packed, first.packed)
    assert len(list(cache.glob("*.npz"))) == 2


# ------------------------------------------------------------------------------------------------------- bad input


def write_mat(tmp_path, contents, name="chair_0000_1.mat", raw=None):
    folder = tmp_path / "bad" / "volumetric_data" / "chair" / "30" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        scipy.io.savemat(str(path), contents)
    return str(tmp_path / "bad")


@pytest.mark.parametrize(
    "contents, raw, message",
    [
        ({"volume": solid_box((1, 1, 1), (5, 5, 5))}, None, "no 'instance' array in the file (keys: volume)"),
        ({"instance": np.zeros((30, 30), np.uint8)}, None, "'instance' has shape (30, 30), expected (30, 30, 30)"),
        ({"instance": np.full((30, 30, 30), 2, np.uint8)}, None, "'instance' holds values other than 0 and 1"),
        (None, b"MATLAB 5.0 MAT-file truncated", "cannot read .mat file"),
        (None, b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "MATLAB v7.3 (HDF5) file"),
    ],
)
def test_bad_mat_files_name_the_file(tmp_path, contents, raw, message):
    path = write_mat(tmp_path, contents, raw=raw)
    with pytest.raises(DataError) as error:
        load(path, tmp_path, use_cache=False)
    assert "chair_0000_1.mat" in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_truncated_mat_file(tmp_path):
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"instance": solid_box((1, 1, 1), (9, 9, 9))}, do_compression=True)
    path = write_mat(tmp_path, None, raw=buffer.getvalue()[:-40])
    with pytest.raises(DataError, match="chair_0000_1.mat: cannot read .mat file"):
        load(path, tmp_path, use_cache=False)


def test_matlab_v73_file_from_the_shared_data(tmp_path, shared_zip):
    with zipfile.ZipFile(shared_zip) as archive:
        content = archive.read("3DShapeNets/volumetric_data/mantel/30/test_feature.mat")
    with pytest.raises(DataError, match="v7.3"):
        data.parse_mat(content, "test_feature.mat")


def test_missing_paths_and_unknown_categories(tmp_path, volumetric_dir):
    with pytest.raises(DataError, match="data path not found: .*nowhere"):
        load(str(tmp_path / "nowhere"), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no 3DShapeNets volumes"):
        load(str(empty), tmp_path)
    with pytest.raises(DataError, match=r"unknown category 'plane' .*available: chair, table"):
        load(volumetric_dir, tmp_path, categories=["plane"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither a folder nor a zip"):
        load(str(tmp_path / "notes.txt"), tmp_path)


def test_corrupt_zip_and_unsafe_member_paths(tmp_path, volumetric_zip):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(open(volumetric_zip, "rb").read()[:-100])
    with pytest.raises(DataError, match="corrupt.zip"):
        load(str(corrupt), tmp_path)
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as archive:
        archive.writestr("../escape/chair/30/train/x_1.mat", b"")
    with pytest.raises(DataError, match="unsafe member path"):
        load(str(unsafe), tmp_path)


def test_no_data_and_no_network_says_what_to_download(tmp_path, monkeypatch):
    import keras

    monkeypatch.delenv("THREEDGAN_DATA", raising=False)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(DataError, match=r"could not download http://3dshapenets.*--data-dir"):
        data.load_dataset(None, cache_dir=str(tmp_path))


def test_environment_variable_names_the_data(tmp_path, volumetric_dir, monkeypatch):
    monkeypatch.setenv("THREEDGAN_DATA", volumetric_dir)
    assert len(data.load_dataset(None, categories=["table"], cache_dir=str(tmp_path))) == 6


def test_real_chairs_from_the_shared_archive(tmp_path, shared_zip):
    dataset = load(shared_zip, tmp_path, categories=["chair"], split="test", rotations="canonical", max_samples=5)
    assert len(dataset) == 5 and all(name.endswith("_1.mat") for name in dataset.names)
    occupancy = dataset.volumes32().mean()
    assert 0.005 < occupancy < 0.2


def test_unpack_and_upsample_in_keras_matches_numpy(tmp_path, volumetric_dir):
    import keras

    dataset = load(volumetric_dir, tmp_path, categories=["chair"])
    expanded = keras.ops.convert_to_numpy(data.unpack_and_upsample(dataset.packed[:3]))
    np.testing.assert_array_equal(expanded, dataset.volumes64([0, 1, 2]))
