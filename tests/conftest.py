"""Shared fixtures: small 3DShapeNets-like data sets that the tests make themselves (no licensed data needed)."""
import os
import zipfile

import numpy as np
import pytest
import scipy.io

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests that need the real 3DShapeNets archive (the zip) read it from this variable, as the library does.
DATA_VARIABLE = "THREEDGAN_DATA"


def solid_box(low, high, side=30):
    volume = np.zeros((side,) * 3, dtype=np.uint8)
    volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = 1
    return volume


def write_tree(root, categories=None, splits=("train", "test"), models=3, rotations=2):
    """Writes `<root>/volumetric_data/<category>/30/<split>/<model>_<rotation>.mat` with boxes of varying size."""
    categories = categories or {"chair": 0, "table": 1}
    rng = np.random.default_rng(0)
    for category, offset in categories.items():
        for split in splits:
            folder = os.path.join(root, "volumetric_data", category, "30", split)
            os.makedirs(folder, exist_ok=True)
            for model in range(models):
                for rotation in range(1, rotations + 1):
                    low = rng.integers(2, 10, 3)
                    high = low + rng.integers(5, 18, 3) + offset
                    scipy.io.savemat(
                        os.path.join(folder, f"{category}_{model:04d}_{rotation}.mat"), {"instance": solid_box(low, high)}
                    )
    return os.path.join(root, "volumetric_data")


def zip_tree(folder, zip_path, prefix="3DShapeNets/volumetric_data"):
    with zipfile.ZipFile(zip_path, "w") as archive:
        for current, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(current, name)
                archive.write(path, f"{prefix}/{os.path.relpath(path, folder)}")
    return zip_path


@pytest.fixture
def volumetric_dir(tmp_path):
    """A `volumetric_data` folder: chair and table, train and test, 3 models × 2 rotations each."""
    return write_tree(str(tmp_path / "data"))


@pytest.fixture
def volumetric_zip(tmp_path, volumetric_dir):
    return zip_tree(volumetric_dir, str(tmp_path / "volumes.zip"))


def real_archive():
    """The real 3DShapeNets zip named by `$THREEDGAN_DATA`, or `None` when the variable names no zip file."""
    path = os.environ.get(DATA_VARIABLE)
    return path if path and os.path.isfile(path) and path.lower().endswith(".zip") else None


@pytest.fixture
def shared_zip():
    """The real 3DShapeNets archive named by `$THREEDGAN_DATA`; the test skips, saying why, when there is none."""
    path = real_archive()
    if path is None:
        reason = f"is {os.environ[DATA_VARIABLE]!r}, not the zip" if os.environ.get(DATA_VARIABLE) else "is not set"
        pytest.skip(f"${DATA_VARIABLE} {reason}; point it at the 3DShapeNets zip to run the tests on real data")
    return path
