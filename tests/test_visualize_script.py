"""Tests for scripts/visualize.py, the command line for existing voxel files."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import trimesh
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "visualize.py"


@pytest.fixture(scope="module")
def visualize():
    spec = importlib.util.spec_from_file_location("visualize_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def chair_like_mat(tmp_path):
    volume = np.zeros((16, 16, 16), dtype=np.uint8)
    volume[3:13, 3:13, 6:8] = 1  # seat
    volume[10:13, 3:13, 8:15] = 1  # back
    for x in (3, 11):
        for y in (3, 11):
            volume[x:x + 2, y:y + 2, 0:6] = 1  # legs
    path = tmp_path / "inputs" / "chair.mat"
    path.parent.mkdir()
    scipy.io.savemat(path, {"instance": volume})
    return path


def test_renders_and_meshes(visualize, chair_like_mat, tmp_path, capsys):
    output_dir = tmp_path / "out"
    exit_code = visualize.main([
        str(chair_like_mat), "--output-dir", str(output_dir), "--format", "png,stl,ply",
        "--image-size", "64", "--voxel-size", "2", "--keep-largest",
    ])
    assert exit_code == 0
    with Image.open(output_dir / "chair.png") as image:
        assert image.size == (64, 64)
    mesh = trimesh.load(output_dir / "chair.stl", force="mesh")
    assert mesh.is_watertight
    assert mesh.bounds[1][2] == pytest.approx(30.0)  # 15 voxels * 2 mm
    assert (output_dir / "chair.ply").is_file()
    assert not (output_dir / "chair.obj").exists()
    assert "chair.stl" in capsys.readouterr().out


def test_views_side_by_side(visualize, chair_like_mat, tmp_path):
    output_dir = tmp_path / "out"
    exit_code = visualize.main([
        str(chair_like_mat), "--output-dir", str(output_dir), "--image-size", "48", "--views", "front,side,top",
    ])
    assert exit_code == 0
    with Image.open(output_dir / "chair.png") as image:
        assert image.width == 3 * 48 and image.height > 48  # three views, each named underneath


def test_same_names_do_not_overwrite(visualize, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "shape.npy", np.ones((4, 4, 4), dtype=np.float32))
    exit_code = visualize.main([
        str(tmp_path / "a" / "shape.npy"), str(tmp_path / "b" / "shape.npy"),
        "--output-dir", str(tmp_path / "out"), "--image-size", "32",
    ])
    assert exit_code == 0
    assert (tmp_path / "out" / "shape.png").is_file()
    assert (tmp_path / "out" / "shape_1.png").is_file()


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["missing.mat"], "not found"),
        (["{tmp}/notes.txt"], "Unsupported volume file type"),
        (["{tmp}/empty.npy", "--format", "stl"], "empty volume"),
        (["{tmp}/empty.npy", "--format", "png,gif"], "--format"),
        (["{tmp}/empty.npy", "--image-size", "0"], "--image-size"),
        (["{tmp}/empty.npy", "--threshold", "high"], "--threshold"),
        (["{tmp}/empty.npy", "--views", "front,bottom"], "--views"),
        ([], "required"),
    ],
)
def test_bad_input_prints_one_error_line(visualize, tmp_path, capsys, arguments, expected):
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "empty.npy", np.zeros((4, 4, 4), dtype=np.float32))
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    exit_code = visualize.main(arguments + ["--output-dir", str(tmp_path / "out")])
    assert exit_code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: ")
    assert expected in error_lines[0]


def test_runs_as_a_script_from_another_folder(chair_like_mat, tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(chair_like_mat), "--output-dir", str(tmp_path / "out"),
         "--image-size", "32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out" / "chair.png").is_file()

    failed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nothing.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: ")
    assert "Traceback" not in failed.stderr
