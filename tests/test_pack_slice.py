"""scripts/pack_slice.py: a packed slice reads back as the same volumes as the data it came from."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from threedgan.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack_slice.py"


@pytest.fixture(scope="module")
def pack_slice():
    spec = importlib.util.spec_from_file_location("pack_slice_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slice_reads_back_as_the_source(pack_slice, volumetric_dir, tmp_path, capsys):
    output = tmp_path / "slices" / "slice.npz"
    status = pack_slice.main([
        "--data-dir", volumetric_dir, "--category", "chair", "table", "--output", str(output),
        "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert status == 0 and "chair_train 6" in capsys.readouterr().out
    for split, rotations in (("train", "all"), ("test", "canonical")):
        original = load_dataset(volumetric_dir, ["table", "chair"], split, rotations, cache_dir=str(tmp_path / "c1"))
        packed = load_dataset(str(output), ["table", "chair"], split, rotations, use_cache=False)
        np.testing.assert_array_equal(packed.packed, original.packed)
        assert list(packed.names) == list(original.names) and list(packed.labels) == list(original.labels)


def test_bad_output_is_one_line(pack_slice, volumetric_dir, tmp_path, capsys):
    assert pack_slice.main(["--data-dir", volumetric_dir, "--category", "chair", "--output", str(tmp_path / "x.zip")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --output must end in .npz (the slice is read by its suffix), got {tmp_path / 'x.zip'}"
