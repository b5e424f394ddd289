"""Bad input through the command lines: each case gives one `error:` line naming the culprit and exit status 2.

The cases run `train_main` / `generate_main` in-process (stderr captured), each also with `--debug`, which lets the
exception and its traceback through; one runs `scripts/train.py` as a process to show the exit status and the
absence of a traceback. A failing run leaves an existing
output folder's weights, config and checkpoints as they were. Checkpoint damage and tampering are in
tests/test_checkpoint.py.
"""
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.io

from tests.conftest import real_archive, solid_box, write_tree, zip_tree
from threedgan.cli import generate_main, train_main
from threedgan.config import Config
from threedgan.errors import ThreedganError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATLAB_V73_MEMBER = "3DShapeNets/volumetric_data/mantel/30/train_feature.mat"
EXIT_USER_ERROR = 2


def permissions_are_enforced():
    """False where file modes do not stop this process (root, or CAP_DAC_OVERRIDE): chmod 000 cannot make a file unreadable."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe")
        open(path, "w").close()
        os.chmod(path, 0)
        try:
            open(path).close()
        except PermissionError:
            return True
        return False


def single_volume_tree(root, write):
    """A `volumetric_data/chair/30/train/` folder holding one file, made by `write(path)`; returns (data, file)."""
    folder = os.path.join(root, "volumetric_data", "chair", "30", "train")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "chair_0000_1.mat")
    write(path)
    return os.path.join(root, "volumetric_data"), path


def save_instance(array):
    return lambda path: scipy.io.savemat(path, {"instance": array})


def write_bytes(content):
    def write(path):
        with open(path, "wb") as handle:
            handle.write(content)

    return write


def valid_mat_bytes():
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"instance": solid_box((2, 2, 2), (20, 20, 20))})
    return buffer.getvalue()


def matlab_v73_bytes():
    """The real data's MATLAB v7.3 feature file if `$THREEDGAN_DATA` names the archive, else an HDF5 file with the same
    128-byte header."""
    if real_archive():
        with zipfile.ZipFile(real_archive()) as archive:
            if MATLAB_V73_MEMBER in archive.namelist():
                return archive.read(MATLAB_V73_MEMBER)
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as file:
        file["instance"] = np.zeros((30, 30, 30), np.uint8)
    content = bytearray(buffer.getvalue())
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
    content[: len(header)] = header
    return bytes(content)


def data_case(write, expected):
    """A case whose data folder holds one file written by `write`; the message must also name that file."""

    def build(tmp_path):
        data_dir, culprit = single_volume_tree(str(tmp_path / "bad"), write)
        return ["--data-dir", data_dir], [expected, os.path.basename(culprit)]

    return build


def as_directory(path):
    os.makedirs(path)


def unreadable_file(path):
    with open(path, "wb") as handle:
        handle.write(valid_mat_bytes())
    os.chmod(path, 0)


def missing_path(tmp_path):
    path = str(tmp_path / "no-such-folder")
    return ["--data-dir", path], [f"data path not found: {path}"]


def empty_path(tmp_path):
    return ["--data-dir", ""], ["the data path is empty"]


def empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--data-dir", str(tmp_path / "empty")], [f"no 3DShapeNets volumes (<category>/30/train/*.mat) found under {tmp_path / 'empty'}"]


def empty_file(tmp_path):
    (tmp_path / "empty.zip").write_bytes(b"")
    return ["--data-dir", str(tmp_path / "empty.zip")], [f"data path {tmp_path / 'empty.zip'} is not a readable zip archive"]


def unknown_category(tmp_path, good_data_dir):
    return ["--data-dir", good_data_dir, "--category", "plane"], ["unknown category 'plane'", "available: chair, table"]


def zipped(tmp_path, good_data_dir):
    return zip_tree(good_data_dir, str(tmp_path / "volumes.zip"))


def truncated_zip(tmp_path, good_data_dir):
    path = zipped(tmp_path, good_data_dir)
    content = open(path, "rb").read()
    open(path, "wb").write(content[: len(content) // 2])
    return ["--data-dir", path], [f"data path {path} is not a readable zip archive (damaged or truncated?)"]


def zip_with_a_damaged_member(tmp_path, good_data_dir):
    path = str(tmp_path / "damaged.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("volumetric_data/chair/30/train/chair_0000_1.mat", valid_mat_bytes())
    content = bytearray(open(path, "rb").read())
    content[600] ^= 0xFF  # inside the stored member's data: its CRC no longer matches
    open(path, "wb").write(bytes(content))
    return ["--data-dir", path], [f"{path}: cannot read member volumetric_data/chair/30/train/chair_0000_1.mat", "CRC"]


def zip_with_member(member):
    def build(tmp_path, good_data_dir):
        path = str(tmp_path / "unsafe.zip")
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(zipfile.ZipInfo(member), valid_mat_bytes())
        return ["--data-dir", path], [f"zip archive {path} holds an unsafe member path {member!r}"]

    return build


def unreadable_zip(tmp_path, good_data_dir):
    path = zipped(tmp_path, good_data_dir)
    os.chmod(path, 0)
    return ["--data-dir", path], [f"cannot read data path {path}: Permission denied"]


def config_not_json(tmp_path, good_data_dir):
    path = tmp_path / "config.json"
    path.write_text("{ not json")
    return ["--data-dir", good_data_dir, "--config", str(path)], [f"cannot read config file {path}"]


def config_unknown_field(tmp_path, good_data_dir):
    path = tmp_path / "config.json"
    path.write_text('{"batch_size": 2, "learning_rate": 0.1}')
    return ["--data-dir", good_data_dir, "--config", str(path)], [f"config file {path} has unknown fields: learning_rate"]


# (name, build(tmp_path[, good_data_dir]) -> (extra arguments, substrings of the error line), needs a good data folder)
TRAIN_CASES = [
    ("missing path", missing_path, False),
    ("empty path", empty_path, False),
    ("empty folder", empty_folder, False),
    ("empty file as data", empty_file, False),
    ("empty .mat", data_case(write_bytes(b""), "cannot read .mat file"), False),
    ("folder where a .mat is expected", data_case(as_directory, "cannot read (Is a directory)"), False),
    ("unknown category", unknown_category, True),
    ("truncated .mat", data_case(write_bytes(valid_mat_bytes()[:300]), "cannot read .mat file"), False),
    ("no instance", data_case(lambda p: scipy.io.savemat(p, {"volume": solid_box((1, 1, 1), (9, 9, 9))}), "no 'instance' array in the file (keys: volume)"), False),
    ("wrong shape", data_case(save_instance(np.zeros((30, 30, 29), np.uint8)), "'instance' has shape (30, 30, 29), expected (30, 30, 30)"), False),
    ("values other than 0/1", data_case(save_instance(np.full((30, 30, 30), 0.5)), "'instance' holds values other than 0 and 1"), False),
    ("MATLAB v7.3", data_case(write_bytes(matlab_v73_bytes()), "MATLAB v7.3 (HDF5) file"), False),
    ("truncated zip", truncated_zip, True),
    ("zip with a damaged member", zip_with_a_damaged_member, True),
    ("zip member with ..", zip_with_member("volumetric_data/../../chair/30/train/chair_0000_1.mat"), True),
    ("zip member with an absolute path", zip_with_member("/volumetric_data/chair/30/train/chair_0000_1.mat"), True),
    ("config not JSON", config_not_json, True),
    ("config with an unknown field", config_unknown_field, True),
]
UNREADABLE_CASES = [
    ("unreadable .mat", data_case(unreadable_file, "cannot read (Permission denied)"), False),
    ("unreadable zip", unreadable_zip, True),
]


@pytest.fixture(scope="module")
def good_data_dir(tmp_path_factory):
    return write_tree(str(tmp_path_factory.mktemp("good")), models=2, rotations=1)


@pytest.fixture
def earlier_run(tmp_path):
    """An output folder holding an earlier run's results; a failing run must leave every byte of it."""
    output_dir = tmp_path / "earlier"
    (output_dir / "checkpoints" / "ckpt-00000010").mkdir(parents=True)
    for name in ("generator_weights.h5", "discriminator_weights.h5", "checkpoints/ckpt-00000010/state.json"):
        (output_dir / name).write_bytes(os.urandom(64))
    Config.from_preset("book", categories=["table"]).save(str(output_dir))
    return output_dir


def folder_bytes(folder):
    contents = {}
    for current, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(current, name)
            contents[os.path.relpath(path, folder)] = open(path, "rb").read()
    return contents


def train_arguments(tmp_path, output_dir, extra):
    return [
        "--category", "chair", "--batch-size", "2", "--epochs", "1", "--output-dir", str(output_dir),
        "--logdir", str(tmp_path / "logs"), "--cache-dir", str(tmp_path / "cache"), *extra,
    ]


def run_train_case(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys):
    extra, expected = build(tmp_path, good_data_dir) if needs_good_data else build(tmp_path)
    before = folder_bytes(earlier_run)
    status = train_main(train_arguments(tmp_path, earlier_run, extra))
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_USER_ERROR, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0]
    assert folder_bytes(earlier_run) == before, "a failing run changed the output folder"
    with pytest.raises((ThreedganError, OSError)):
        train_main(train_arguments(tmp_path, earlier_run, extra) + ["--debug"])  # --debug lets the exception through
    assert folder_bytes(earlier_run) == before


@pytest.mark.parametrize("build, needs_good_data", [case[1:] for case in TRAIN_CASES], ids=[case[0] for case in TRAIN_CASES])
def test_train_bad_input(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys):
    run_train_case(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys)


@pytest.mark.skipif(
    not permissions_are_enforced(),
    reason="this process reads files whatever their mode (root); the folder-where-a-.mat-is-expected case stands in",
)
@pytest.mark.parametrize("build, needs_good_data", [case[1:] for case in UNREADABLE_CASES], ids=[case[0] for case in UNREADABLE_CASES])
def test_train_unreadable_input(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys):
    run_train_case(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run's output folder as `generate` expects it: config.json beside generator_weights.h5 of the chapter's G."""
    from threedgan.models import build_generator
    from threedgan.weights import save_weights_h5

    folder = tmp_path_factory.mktemp("run")
    config = Config.from_preset("book")
    config.save(str(folder))
    save_weights_h5(build_generator(config), str(folder / "generator_weights.h5"))
    return folder


def other_architecture(folder):
    from tests.fast_models import fast_models
    from threedgan.weights import save_weights_h5

    save_weights_h5(fast_models()[0], str(folder / "generator_weights.h5"))
    return ["--weights", str(folder / "generator_weights.h5")], ["but model generator has 9 layers with weights"]


def not_hdf5(folder):
    (folder / "generator_weights.h5").write_text("these are not weights")
    return ["--weights", str(folder / "generator_weights.h5")], ["is not an HDF5 file"]


def truncated_weights(folder, run_folder):
    content = (run_folder / "generator_weights.h5").read_bytes()
    (folder / "generator_weights.h5").write_bytes(content[: len(content) // 3])
    return ["--weights", str(folder / "generator_weights.h5")], ["generator_weights.h5"]


def folder_as_weights(folder):
    # `--weights` may name a run folder; one without weights in it is named in the error.
    (folder / "generator_weights.h5").mkdir()
    return ["--weights", str(folder / "generator_weights.h5")], ["weights file not found", "generator_weights.h5/generator_weights.h5"]


def missing_weights(folder):
    return ["--weights", str(folder / "generator_weights.h5")], ["weights file not found"]


def broken_config(folder, run_folder):
    (folder / "generator_weights.h5").write_bytes((run_folder / "generator_weights.h5").read_bytes())
    (folder / "config.json").write_text('{"z_size": 0}')
    return ["--weights", str(folder / "generator_weights.h5")], ["config field z_size = 0 must be at least 1", "config.json"]


GENERATE_CASES = [
    ("weights of another architecture", other_architecture, False),
    ("non-HDF5 weights", not_hdf5, False),
    ("truncated weights", truncated_weights, True),
    ("folder given as weights", folder_as_weights, False),
    ("missing weights", missing_weights, False),
    ("invalid config beside the weights", broken_config, True),
]


@pytest.mark.parametrize("build, needs_run", [case[1:] for case in GENERATE_CASES], ids=[case[0] for case in GENERATE_CASES])
def test_generate_bad_input(build, needs_run, run_folder, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    if build is not broken_config:
        Config.from_preset("book").save(str(folder))
    extra, expected = build(folder, run_folder) if needs_run else build(folder)
    argv = extra + ["--output-dir", str(tmp_path / "results"), "--num", "1"]
    assert generate_main(argv) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "generator_weights.h5" in lines[0] or "config.json" in lines[0], "the line names the file"
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "results").exists(), "nothing written on failure"
    with pytest.raises((ThreedganError, OSError)):
        generate_main(argv + ["--debug"])


def run_script(arguments):
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, "scripts", "train.py"), *arguments],
        capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=300,
    )


def test_the_script_exits_2_without_a_traceback(tmp_path):
    """As a process: the status and stderr a user sees (`--debug` is checked in-process above)."""
    data_dir, culprit = single_volume_tree(str(tmp_path / "bad"), write_bytes(valid_mat_bytes()[:300]))
    result = run_script(train_arguments(tmp_path, tmp_path / "out", ["--data-dir", data_dir]))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == EXIT_USER_ERROR
    assert len(errors) == 1 and "chair/30/train/chair_0000_1.mat: cannot read .mat file" in errors[0]
    assert "Traceback" not in result.stderr
