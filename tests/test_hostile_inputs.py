"""Hostile input, refusing systems and killed saves (issue 16): each case ends in one line `error: ...` naming the file
or argument, exit status 2, nothing in the output folder changed, and bounded memory where a file asks for more.

Classes, as the issue numbers them:
1. a final save killed between files leaves a mix that generate and evaluate refuse;
2. memory bombs (zip members, .npz arrays, compressed .mat variables, .npy/.binvox headers) and special files
   (FIFOs, devices, symlinks to them) are refused before anything is allocated or opened;
3. OS refusals (a file where a folder goes, a name too long, a read-only file system, a full disk) are one line,
   found before training where they can be;
4. types and bounds of config.json, trials.json, packed slices, samples.npz and weights files;
5. nonsense numbers (thresholds, latents, voxel sizes);
6. zip members that are encrypted or compressed with a method Python lacks.
(7, signals, belongs to issue 14.)

Every hostile file is made here, in tmp_path. FIFO cases run under an alarm, so a regression fails instead of hanging.
"""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest
import scipy.io

from tests.conftest import write_tree
from tests.test_bad_inputs import (  # noqa: F401  (fixtures)
    EXIT_USER_ERROR,
    earlier_run,
    folder_bytes,
    good_data_dir,
    run_folder,
    run_train_case,
    single_volume_tree,
    train_arguments,
    valid_mat_bytes,
    write_bytes,
)
from threedgan import evaluate, tune
from threedgan.cli import error_line, generate_main, train_main
from threedgan.config import Config
from threedgan.errors import ConfigError, DataError, WeightsError
from threedgan.run_set import MANIFEST_FILENAME, SET_FILENAMES, check_final_set, write_final_set

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBER = "volumetric_data/chair/30/train/chair_0000_1.mat"


@pytest.fixture
def alarm():
    """Fails a test that blocks (on a FIFO, say) for 60 s instead of letting it hang the suite."""

    def expired(signal_number, frame):
        raise TimeoutError("blocked for 60 s: something opened a FIFO or read a device")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def one_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert not any("Traceback" in line for line in lines), lines
    return errors[0]


def peak_allocation(function, *arguments, **keywords):
    """Runs `function`; returns (what it returned or the exception it raised, the peak bytes Python and NumPy
    allocated meanwhile)."""
    tracemalloc.start()
    try:
        outcome = function(*arguments, **keywords)
    except Exception as error:  # noqa: BLE001 - returned for the caller to check
        outcome = error
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return outcome, peak


# ------------------------------------------------------------------------------------- 1. the final save is one set


def fast_pair(seed):
    import keras

    from tests.fast_models import fast_models

    keras.utils.set_random_seed(seed)
    return fast_models()


class Killed(BaseException):
    """Stands for the process dying in the middle of a save (not an Exception, as a kill is not one)."""


@pytest.mark.parametrize("renames_before_death, usable", [(0, True), (1, False), (2, False), (3, True)])
def test_a_save_stopped_between_any_two_files_is_one_set_or_refused(tmp_path, monkeypatch, renames_before_death, usable):
    folder = str(tmp_path / "run")
    write_final_set(folder, *fast_pair(1), Config.from_preset("book"))
    old = folder_bytes(folder)
    real_replace, renamed = os.replace, []

    def dying_replace(source, destination):
        name = os.path.basename(destination)
        # Death before the next rename of the set, or (after all three) before the manifest drops the old set.
        if name in SET_FILENAMES or (name == MANIFEST_FILENAME and len(renamed) == len(SET_FILENAMES)):
            if len(renamed) == renames_before_death:
                raise Killed()
            if name in SET_FILENAMES:
                renamed.append(destination)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        write_final_set(folder, *fast_pair(2), Config.from_preset("book", z_stddev=0.5))
    monkeypatch.setattr(os, "replace", real_replace)
    now = folder_bytes(folder)
    changed = sorted(name for name in SET_FILENAMES if now[name] != old[name])
    assert changed == sorted(SET_FILENAMES[:renames_before_death])
    if usable:
        check_final_set(folder)
    else:
        with pytest.raises(WeightsError, match="not from the save that wrote") as refused:
            check_final_set(folder)
        assert all(name in str(refused.value) for name in SET_FILENAMES)


def test_a_final_save_on_a_full_disk_leaves_the_earlier_set_as_it_was(tmp_path, monkeypatch):
    folder = str(tmp_path / "run")
    write_final_set(folder, *fast_pair(1), Config.from_preset("book"))
    before = folder_bytes(folder)
    from threedgan import weights

    real_write, calls = weights._write_weights, []

    def full_disk(file, model):
        calls.append(model.name)
        if len(calls) == 2:  # the discriminator: the generator's temporary file is already on disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(file, model)

    monkeypatch.setattr(weights, "_write_weights", full_disk)
    with pytest.raises(OSError) as raised:
        write_final_set(folder, *fast_pair(2), Config.from_preset("book", z_stddev=0.5))
    assert raised.value.errno == errno.ENOSPC and "discriminator" in error_line(raised.value)
    assert "No space left on device" in error_line(raised.value)
    assert folder_bytes(folder) == before, "no temporary file left, nothing replaced"
    check_final_set(folder)


KILL_BETWEEN_FILES = r"""
import os, signal, sys
import keras
from threedgan.config import Config
from threedgan.models import build_discriminator, build_generator
from threedgan.run_set import SET_FILENAMES, write_final_set

config = Config.from_preset("book", z_stddev=0.5, seed=7)
keras.utils.set_random_seed(7)
generator, discriminator = build_generator(config), build_discriminator(config)
real_replace = os.replace

def replace(source, destination):
    real_replace(source, destination)
    if os.path.basename(destination) == SET_FILENAMES[0]:
        os.kill(os.getpid(), signal.SIGKILL)  # between the first file and the second

os.replace = replace
write_final_set(sys.argv[1], generator, discriminator, config)
"""


def test_generate_and_evaluate_refuse_the_files_a_killed_final_save_mixed(tmp_path, capsys):
    """The issue's case: SIGKILL between generator_weights.h5 and discriminator_weights.h5 of the chapter's networks."""
    from threedgan.models import build_discriminator, build_generator

    folder = tmp_path / "run"
    config = Config.from_preset("book")
    write_final_set(str(folder), build_generator(config), build_discriminator(config), config)
    old = folder_bytes(str(folder))
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPOSITORY)
    result = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_FILES, str(folder)], env=environment, capture_output=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    now = folder_bytes(str(folder))
    assert now["generator_weights.h5"] != old["generator_weights.h5"], "the new generator is in place"
    assert now["discriminator_weights.h5"] == old["discriminator_weights.h5"] and now["config.json"] == old["config.json"]

    results = tmp_path / "results"
    assert generate_main(["--weights", str(folder / "generator_weights.h5"), "--output-dir", str(results), "--num", "1"]) == 2
    line = one_error_line(capsys)
    assert "generator_weights.h5 is not from the save that wrote discriminator_weights.h5, config.json" in line
    assert not results.exists()
    with pytest.raises(WeightsError, match="not from the save"):
        evaluate.load_discriminator(str(folder / "discriminator_weights.h5"))


# ---------------------------------------------------------------------------------- 2. memory bombs, special files


def zip_bomb(tmp_path, megabytes=64):
    """A zip whose one .mat member inflates to `megabytes` MB of zeros (a few tens of KB compressed)."""
    path = str(tmp_path / "bomb.zip")
    info = zipfile.ZipInfo(MEMBER)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open(info, "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(zeros)
    return path


def test_a_zip_member_inflating_past_a_volume_is_refused_before_it_is_read(tmp_path):
    from threedgan.data import load_dataset

    path = zip_bomb(tmp_path)
    assert os.path.getsize(path) < 1 << 20
    error, peak = peak_allocation(load_dataset, path, ["chair"], cache_dir=str(tmp_path / "cache"), use_cache=False)
    assert isinstance(error, DataError), error
    assert isinstance(error, DataError) and f"member {MEMBER} would decompress to 64.0 MiB" in str(error)
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated"


def mat_bomb(path):
    """A .mat whose compressed 'instance' inflates to 48 MB (about 50 KB on disk)."""
    scipy.io.savemat(path, {"instance": np.zeros((2000, 3000), np.float64)}, do_compression=True)


def npz_bomb(path, rows):
    """A samples.npz whose 'packed' array declares `rows` × 32 KiB of zeros: tiny compressed."""
    np.savez_compressed(path, packed=np.zeros((rows, 32768), np.uint8), shape=np.array([rows, 64, 64, 64]))


def test_a_samples_file_declaring_more_than_4096_shapes_is_refused_before_decompression(tmp_path):
    from threedgan.generate import load_packed_samples

    path = str(tmp_path / "samples.npz")
    npz_bomb(path, 5000)  # 156 MiB of zeros
    assert os.path.getsize(path) < 2 << 20
    error, peak = peak_allocation(load_packed_samples, path)
    assert isinstance(error, ConfigError) and "array packed.npy would decompress to 156.3 MiB" in str(error), error
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated"


def test_a_compressed_mat_variable_inflating_past_a_volume_is_refused(tmp_path):
    from threedgan.data import parse_mat

    path = str(tmp_path / "bomb.mat")
    mat_bomb(path)
    content = open(path, "rb").read()
    assert len(content) < 1 << 20
    error, peak = peak_allocation(parse_mat, content, "bomb.mat")
    assert isinstance(error, DataError) and "bomb.mat: its variables inflate to more than 4.0 MiB" in str(error)
    assert peak < 8 << 20


def big_mat(path):
    """A .mat whose compressed uint8 'instance' inflates to 64 MB (about 70 KB on disk)."""
    scipy.io.savemat(path, {"instance": np.zeros((8000, 8000), np.uint8)}, do_compression=True)


def sparse_npy(path, shape, dtype=np.uint8):
    """An .npy whose header declares `shape` and whose data is a hole (no disk used): a 1 GiB 'volume'."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    with open(path, "wb") as handle:
        handle.write(header.getvalue())
        handle.truncate(len(header.getvalue()) + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def binvox_header(path, side):
    with open(path, "wb") as handle:
        handle.write(f"#binvox 1\ndim {side} {side} {side}\ntranslate 0 0 0\nscale 1\ndata\n".encode() + bytes([0, 255]) * 4)


def visualize(arguments):
    sys.path.insert(0, os.path.join(REPOSITORY, "scripts"))
    try:
        import visualize as script
    finally:
        sys.path.pop(0)
    return script.main(arguments)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: sparse_npy(path + ".npy", (1024, 1024, 1024)), "is too large (1.0 GiB"),
        (lambda path: sparse_npy(path + ".npy", (64, 64, 64))
         or open(path + ".npy", "r+b").truncate(200), "truncated"),  # a header promising more than the file holds
        (lambda path: binvox_header(path + ".binvox", 4096), ".binvox grid (4096, 4096, 4096) is too large"),
        (lambda path: big_mat(path + ".mat"), "its variables inflate to more than 40.0 MiB"),
        (lambda path: scipy.io.savemat(path + ".mat", {"instance": np.zeros((300, 300, 300), np.uint8)}),
         "'instance' is larger than 16,777,216 voxels"),
        (lambda path: os.symlink("/dev/zero", path + ".npy"), "is a character device (through a symlink)"),
        (lambda path: os.mkfifo(path + ".npy"), "is a FIFO (named pipe)"),
    ],
    ids=["1 GiB sparse .npy", "header larger than file", "huge .binvox", "compressed .mat bomb", "300³ .mat", "/dev/zero", "FIFO"],
)
def test_visualize_refuses_volumes_larger_than_a_volume_and_special_files(tmp_path, capsys, alarm, make, message):
    stem = str(tmp_path / "hostile")
    make(stem)
    (path,) = [str(tmp_path / name) for name in os.listdir(tmp_path) if name.startswith("hostile")]
    status, peak = peak_allocation(visualize, [path, "--output-dir", str(tmp_path / "out")])
    assert status == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert message in line and "hostile" in line
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated"
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def mat_symlinked_to_dev_zero(tmp_path):
    data_dir, culprit = single_volume_tree(str(tmp_path / "bad"), lambda path: os.symlink("/dev/zero", path))
    return ["--data-dir", data_dir], ["chair_0000_1.mat is a character device (through a symlink), not a regular file"]


def fifo_in_train_folder(tmp_path):
    data_dir, _ = single_volume_tree(str(tmp_path / "bad"), os.mkfifo)
    return ["--data-dir", data_dir], ["chair_0000_1.mat is a FIFO (named pipe), not a regular file"]


def fifo_as_data_dir(tmp_path):
    os.mkfifo(tmp_path / "pipe.zip")
    return ["--data-dir", str(tmp_path / "pipe.zip")], [f"data path {tmp_path / 'pipe.zip'} is a FIFO (named pipe)"]


def dev_zero_as_data_dir(tmp_path):
    return ["--data-dir", "/dev/zero"], ["data path /dev/zero is a character device"]


def fifo_as_config(tmp_path, good_data_dir):
    os.mkfifo(tmp_path / "config.json")
    return ["--data-dir", good_data_dir, "--config", str(tmp_path / "config.json")], ["config file", "is a FIFO"]


def oversized_mat_in_folder(tmp_path):
    data_dir, _ = single_volume_tree(str(tmp_path / "bad"), lambda path: open(path, "wb").truncate(5 << 20))
    return ["--data-dir", data_dir], [".mat file", "chair_0000_1.mat is too large (5.0 MiB; at most 4.0 MiB"]


def mat_bomb_in_folder(tmp_path):
    data_dir, _ = single_volume_tree(str(tmp_path / "bad"), mat_bomb)
    return ["--data-dir", data_dir], ["chair_0000_1.mat: its variables inflate to more than 4.0 MiB"]


def zip_bomb_as_data(tmp_path, good_data_dir):
    path = zip_bomb(tmp_path, megabytes=8)
    return ["--data-dir", path], [f"{path}: member {MEMBER} would decompress to 8.0 MiB, more than the 4.0 MiB"]


def instance_declared_huge(tmp_path):
    # An uncompressed .mat whose 'instance' header says 30×30×3000: refused from its header, before its data.
    data_dir, _ = single_volume_tree(str(tmp_path / "bad"), lambda path: scipy.io.savemat(path, {"instance": np.zeros((30, 30, 3000), np.uint8)}))
    return ["--data-dir", data_dir], ["'instance' has shape (30, 30, 3000), expected (30, 30, 30)"]


# --------------------------------------------------------------------------------------- 3. the system says no


def output_dir_is_a_file(tmp_path, good_data_dir):
    (tmp_path / "taken").write_text("a file")
    # The data path is bad too: the output folder must be found wanting first, before any data is read.
    return ["--data-dir", str(tmp_path / "no-data"), "--output-dir", str(tmp_path / "taken")], [
        f"--output-dir {tmp_path / 'taken'} is a file, not a folder"
    ]


def output_dir_below_a_file(tmp_path, good_data_dir):
    (tmp_path / "taken").write_text("a file")
    return ["--data-dir", good_data_dir, "--output-dir", str(tmp_path / "taken" / "run")], [
        f"cannot be created: {tmp_path / 'taken'} is a file"
    ]


def name_too_long(tmp_path, good_data_dir):
    return ["--data-dir", good_data_dir, "--output-dir", str(tmp_path / ("x" * 300))], ["is 300 bytes long; the file system allows 255"]


def logdir_is_a_file(tmp_path, good_data_dir):
    (tmp_path / "logs").write_text("a file")
    return ["--data-dir", good_data_dir], [f"--logdir {tmp_path / 'logs'} is a file, not a folder"]


def checkpoints_path_is_a_file(tmp_path, good_data_dir):
    output_dir = tmp_path / "fresh"
    output_dir.mkdir()
    (output_dir / "checkpoints").write_text("a file")
    return ["--data-dir", good_data_dir, "--output-dir", str(output_dir)], [
        f"the checkpoints folder {output_dir / 'checkpoints'} is a file, not a folder"
    ]


# ------------------------------------------------------------------------------------------------------- 4. types


def config_file(values):
    def build(tmp_path, good_data_dir):
        path = tmp_path / "hostile-config.json"
        document = Config.from_preset("book").to_dict()
        document.update(values)
        path.write_text(json.dumps(document))
        name, value = next(iter(values.items()))
        return ["--data-dir", good_data_dir, "--config", str(path)], [str(path), f"config field {name} = {value!r}"]

    return build


def packed_slice(arrays, message):
    def build(tmp_path, good_data_dir):
        path = str(tmp_path / "slice.npz")
        np.savez(path, **arrays)
        return ["--data-dir", path], [message]

    return build


GOOD_ROWS = np.zeros((2, 4096), np.uint8)
GOOD_NAMES = np.array(["chair_0000_1.mat", "chair_0001_1.mat"])


def object_array_slice(tmp_path, good_data_dir):
    path = str(tmp_path / "slice.npz")
    np.savez(path, chair_train=GOOD_ROWS, chair_train_names=np.array(list(GOOD_NAMES), dtype=object))
    return ["--data-dir", path], ["array 'chair_train_names' holds Python objects, which are never loaded"]


# ------------------------------------------------------------------------------------------------- 6. zip members


def patched_zip(tmp_path, flag_bits=0, method=None):
    """A zip with one stored .mat member whose headers (local and central) are patched to say it is encrypted, or
    compressed with `method`."""
    path = str(tmp_path / "patched.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(MEMBER, valid_mat_bytes())
    content = bytearray(open(path, "rb").read())
    local, central = content.index(b"PK\x03\x04"), content.index(b"PK\x01\x02")
    for offset, flags_at in ((local, 6), (central, 8)):
        content[offset + flags_at] |= flag_bits
        if method is not None:
            content[offset + flags_at + 2 : offset + flags_at + 4] = method.to_bytes(2, "little")
    open(path, "wb").write(bytes(content))
    return path


def encrypted_member(tmp_path, good_data_dir):
    path = patched_zip(tmp_path, flag_bits=0x1)
    return ["--data-dir", path], [f"{path}: member {MEMBER} is encrypted; extract the archive with its password"]


def deflate64_member(tmp_path, good_data_dir):
    path = patched_zip(tmp_path, method=9)
    return ["--data-dir", path], [f"{path}: member {MEMBER} uses compression method 9 (Deflate64)", "7z x"]


# (class, name, build(tmp_path[, good_data_dir]) -> (extra arguments, substrings of the error line), needs good data)
TRAIN_CASES = [
    (2, ".mat symlinked to /dev/zero", mat_symlinked_to_dev_zero, False),
    (2, "FIFO named x_1.mat in the train folder", fifo_in_train_folder, False),
    (2, "FIFO as --data-dir", fifo_as_data_dir, False),
    (2, "--data-dir /dev/zero", dev_zero_as_data_dir, False),
    (2, "FIFO as --config", fifo_as_config, True),
    (2, "5 MiB .mat", oversized_mat_in_folder, False),
    (2, "compressed .mat bomb", mat_bomb_in_folder, False),
    (2, "zip member bomb", zip_bomb_as_data, True),
    (2, "instance declared 30x30x3000", instance_declared_huge, False),
    (3, "output folder is a file", output_dir_is_a_file, True),
    (3, "output folder below a file", output_dir_below_a_file, True),
    (3, "300-character name", name_too_long, True),
    (3, "logdir is a file", logdir_is_a_file, True),
    (3, "checkpoints path is a file", checkpoints_path_is_a_file, True),
    (4, "batch_size '32'", config_file({"batch_size": "32"}), True),
    (4, "batch_size 2.5", config_file({"batch_size": 2.5}), True),
    (4, "batch_size null", config_file({"batch_size": None}), True),
    (4, "batch_size true", config_file({"batch_size": True}), True),
    (4, "batch_size 10^9", config_file({"batch_size": 10**9}), True),
    (4, "z_size 10^6", config_file({"z_size": 10**6}), True),
    (4, "seed 'abc'", config_file({"seed": "abc"}), True),
    (4, "seed -1", config_file({"seed": -1}), True),
    (4, "z_stddev NaN", config_file({"z_stddev": float("nan")}), True),
    (4, "categories a number", config_file({"categories": 3}), True),
    (4, "skip_bad 1", config_file({"skip_bad": 1}), True),
    (4, "slice with object names", object_array_slice, True),
    (4, "slice without names", packed_slice({"chair_train": GOOD_ROWS}, "has chair_train but no chair_train_names array"), True),
    (4, "slice rows 100 wide", packed_slice({"chair_train": np.zeros((2, 100), np.uint8), "chair_train_names": GOOD_NAMES}, "expected uint8 rows of 4096 bytes"), True),
    (4, "slice float rows", packed_slice({"chair_train": GOOD_ROWS.astype(np.float64), "chair_train_names": GOOD_NAMES}, "chair_train is a float64 array"), True),
    (4, "slice names count", packed_slice({"chair_train": GOOD_ROWS, "chair_train_names": GOOD_NAMES[:1]}, "has 2 rows but chair_train_names 1 names"), True),
    (6, "encrypted zip member", encrypted_member, True),
    (6, "Deflate64 zip member", deflate64_member, True),
]


@pytest.mark.parametrize(
    "build, needs_good_data", [case[2:] for case in TRAIN_CASES], ids=[f"{case[0]}: {case[1]}" for case in TRAIN_CASES]
)
def test_train_hostile_input(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys, alarm):
    """One line naming the culprit, exit 2, the earlier run's folder untouched (`run_train_case`), bounded time."""
    run_train_case(build, needs_good_data, tmp_path, good_data_dir, earlier_run, capsys)


def test_a_read_only_file_system_is_found_before_training(tmp_path, good_data_dir, monkeypatch, capsys):
    """A read-only mount cannot be made without privileges here: `access` and `statvfs` answer as on one."""
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, result):
            self.f_flag = result.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode, **keywords: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly(real_statvfs(path)))
    status = train_main(train_arguments(tmp_path, tmp_path / "out", ["--data-dir", str(tmp_path / "no-data")]))
    assert status == EXIT_USER_ERROR
    assert f"--output-dir {tmp_path / 'out'} cannot be created: {tmp_path} is on a read-only file system" in one_error_line(capsys)


@pytest.fixture
def fast_networks(monkeypatch):
    from tests.fast_models import fast_builders
    from threedgan import train as train_module

    build_generator, build_discriminator = fast_builders()
    monkeypatch.setattr(train_module, "build_generator", build_generator)
    monkeypatch.setattr(train_module, "build_discriminator", build_discriminator)


def fast_run(data_dir, root, name, *extra):
    return [
        "--data-dir", data_dir, "--category", "chair", "--batch-size", "2", "--epochs", "1", "--seed", "3",
        "--output-dir", str(root / name), "--logdir", str(root / "logs"), "--run-name", name,
        "--image-every-steps", "0", "--cache-dir", str(root / "cache"), *extra,
    ]


def full_disk(file, model):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_checkpoint_time_is_one_line_and_leaves_no_checkpoint(tmp_path, fast_networks, monkeypatch, capsys):
    from threedgan import weights

    data_dir = write_tree(str(tmp_path / "data"), categories={"chair": 0}, models=2, rotations=1)
    monkeypatch.setattr(weights, "_write_weights", full_disk)
    assert train_main(fast_run(data_dir, tmp_path, "out", "--checkpoint-every-steps", "1")) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert str(tmp_path / "out" / "checkpoints") in line and "No space left on device" in line
    assert os.listdir(tmp_path / "out" / "checkpoints") == [], "no checkpoint, no temporary folder"
    assert not set(SET_FILENAMES) & set(os.listdir(tmp_path / "out"))


def test_a_full_disk_at_the_final_save_keeps_the_earlier_set(tmp_path, fast_networks, monkeypatch, capsys):
    from threedgan import weights

    data_dir = write_tree(str(tmp_path / "data"), categories={"chair": 0}, models=2, rotations=1)
    arguments = fast_run(data_dir, tmp_path, "out", "--checkpoint-every-steps", "0")
    assert train_main(arguments) == 0
    capsys.readouterr()
    kept = {name: (tmp_path / "out" / name).read_bytes() for name in SET_FILENAMES + (MANIFEST_FILENAME,)}
    monkeypatch.setattr(weights, "_write_weights", full_disk)
    assert train_main(arguments + ["--seed", "4", "--no-resume"]) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert str(tmp_path / "out") in line and "No space left on device" in line
    assert {name: (tmp_path / "out" / name).read_bytes() for name in kept} == kept
    assert not [name for name in os.listdir(tmp_path / "out") if ".tmp" in name]
    check_final_set(str(tmp_path / "out"))


def test_tune_checks_its_folders_before_reading_data(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    status = tune.tune_main(["--data-dir", str(tmp_path / "no-data"), "--max-evals", "1", "--output-dir", str(tmp_path / "taken")])
    assert status == EXIT_USER_ERROR
    assert f"--output-dir {tmp_path / 'taken'} is a file, not a folder" in one_error_line(capsys)


def test_oserrors_become_one_line_naming_the_path():
    assert error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.h5")) == "/mnt/ro/x.h5: Read-only file system"
    assert error_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert error_line(FileExistsError(errno.EEXIST, "File exists", "/a", None, "/b")) == "/a -> /b: File exists"
    assert error_line(MemoryError()).startswith("out of memory")


def test_generate_and_evaluate_check_their_output_folders_first(run_folder, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    weights = str(run_folder / "generator_weights.h5")
    assert generate_main(["--weights", weights, "--output-dir", str(tmp_path / "taken")]) == EXIT_USER_ERROR
    assert f"--output-dir {tmp_path / 'taken'} is a file" in one_error_line(capsys)
    arguments = ["--samples", str(tmp_path / "s.npz"), "--json", str(tmp_path / "taken" / "r.json")]
    assert evaluate.evaluate_main(arguments) == EXIT_USER_ERROR
    assert f"the folder of --json {tmp_path / 'taken'} is a file, not a folder" in one_error_line(capsys)


# ------------------------------------------------------------------------------- 4. trials.json, samples, weights


def trials_document(record_changes=None, result_changes=None, metric_changes=None, param_changes=None):
    params = tune.preset_params("book")
    record = {
        "tid": 0,
        "vals": tune.values_from_params(params),
        "result": {"status": "ok", "loss": 0.25, "params": params, "origin": "book",
                   "metrics": {"1nna_iou": 0.75, "cov_iou": 0.5, "mmd_iou": 0.4, "diverged": False}},
        "book_time": None,
        "refresh_time": None,
    }
    record.update(record_changes or {})
    record["result"].update(result_changes or {})
    record["result"]["metrics"].update(metric_changes or {})
    record["result"]["params"].update(param_changes or {})
    return {"format": tune.TRIALS_FORMAT, "version": tune.TRIALS_FORMAT_VERSION, "settings": {}, "trials": [record]}


@pytest.mark.parametrize(
    "document, message",
    [
        (trials_document(result_changes={"loss": float("nan")}), "loss nan is not a finite number"),
        (trials_document(result_changes={"loss": float("inf")}), "loss inf is not a finite number"),
        (trials_document(metric_changes={"1nna_iou": "0.5"}), "metric 1nna_iou = '0.5' is not a finite number"),
        (trials_document(metric_changes={"mmd_iou": float("-inf")}), "metric mmd_iou = -inf"),
        (trials_document(param_changes={"batch_size": "32"}), "config field batch_size = '32' must be an integer"),
        (trials_document(param_changes={"generator_learning_rate": None}), "config field generator_learning_rate = None must not be null"),
        (trials_document(param_changes={"z_stddev": True}), "config field z_stddev = True must be a number"),
        (trials_document(record_changes={"vals": {"batch_size": 1.5}}), "value batch_size = 1.5 must be an integer"),
        (trials_document(result_changes={"origin": ["book"]}), "origin ['book'] is not 'search' or a preset"),
    ],
    ids=["NaN loss", "inf loss", "string metric", "-inf metric", "string param", "null param", "bool param",
         "float choice index", "list origin"],
)
def test_trials_files_with_nonsense_are_refused(tmp_path, document, message):
    path = tmp_path / "trials.json"
    path.write_text(json.dumps(document))  # json writes NaN and Infinity, as a hostile file may
    with pytest.raises(ConfigError, match="trial record 0") as refused:
        tune.read_trials_file(str(path))
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_tune_refuses_a_bad_trials_file_in_one_line(tmp_path, good_data_dir, capsys):
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "trials.json").write_text(json.dumps(trials_document(result_changes={"loss": float("nan")})))
    status = tune.tune_main(["--data-dir", good_data_dir, "--max-evals", "1", "--output-dir", str(tmp_path / "tune")])
    assert status == EXIT_USER_ERROR
    assert "loss nan is not a finite number" in one_error_line(capsys)


def samples_file(**arrays):
    def build(path):
        np.savez_compressed(path, **arrays)

    return build


GOOD_PACKED = np.zeros((2, 32768), np.uint8)


@pytest.mark.parametrize(
    "write, message",
    [
        (samples_file(packed=GOOD_PACKED, shape=np.array([3, 64, 64, 64])), "'packed' is a uint8 array of shape (2, 32768), but 'shape' (3, 64, 64, 64) needs uint8 (3, 32768)"),
        (samples_file(packed=GOOD_PACKED, shape=np.array([2, -64, 64, 64])), "'shape' must be 4 positive integers"),
        (samples_file(packed=GOOD_PACKED, shape=np.array(2)), "'shape' must be 4 positive integers"),
        (samples_file(packed=GOOD_PACKED.astype(np.float32), shape=np.array([2, 64, 64, 64])), "'packed' is a float32 array"),
        (samples_file(packed=GOOD_PACKED, shape=np.array([2**20, 64, 64, 64])), "declares more than"),
        (samples_file(shape=np.array([2, 64, 64, 64])), "is not a samples file from generate.py --format npz (no packed array)"),
        (write_bytes(b"not a zip at all"), "is not a readable zip archive"),
        (lambda path: npz_bomb(path, 5000), "array packed.npy would decompress to 156.3 MiB"),
        (os.mkfifo, "is a FIFO (named pipe)"),
    ],
    ids=["row count", "negative shape", "scalar shape", "float packed", "huge shape", "no packed", "not a zip", "bomb", "FIFO"],
)
def test_evaluate_refuses_malformed_samples_files(tmp_path, good_data_dir, capsys, alarm, write, message):
    path = str(tmp_path / "samples.npz")
    write(path)
    arguments = ["--samples", path, "--data-dir", good_data_dir, "--cache-dir", str(tmp_path / "cache"), "--distances", "iou"]
    assert evaluate.evaluate_main(arguments) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert message in line and path in line


def weights_with(run_folder, tmp_path, change):
    """A copy of the run's generator weights (and config) with one dataset changed by `change(file, name)`."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_bytes((run_folder / "config.json").read_bytes())
    (folder / "generator_weights.h5").write_bytes((run_folder / "generator_weights.h5").read_bytes())
    with h5py.File(folder / "generator_weights.h5", "r+") as file:
        names = []
        file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) and "kernel" in name else None)
        change(file, names[0])
    return str(folder / "generator_weights.h5"), names[0]


def all_nan(file, name):
    file[name][...] = np.nan


def one_infinity(file, name):
    values = file[name][()]
    values.flat[17] = np.inf
    file[name][...] = values


def complex_values(file, name):
    values = file[name][()]
    del file[name]
    file[name] = values.astype(np.complex64)


@pytest.mark.parametrize("change, message", [(all_nan, "holds NaN or infinite values"), (one_infinity, "holds NaN or infinite values"), (complex_values, "holds complex values")])
def test_weights_that_are_not_finite_real_numbers_are_refused(run_folder, tmp_path, capsys, change, message):
    weights, dataset = weights_with(run_folder, tmp_path, change)
    assert generate_main(["--weights", weights, "--output-dir", str(tmp_path / "results"), "--num", "1"]) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert message in line and weights in line and dataset.split("/")[-1] in line
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------- 5. nonsense numbers


@pytest.mark.parametrize(
    "flag, value",
    [("--threshold", "nan"), ("--threshold", "2"), ("--threshold", "0"), ("--threshold", "1"), ("--voxel-size", "inf"),
     ("--voxel-size", "nan"), ("--num", "1000000000"), ("--seed", "-1"), ("--image-size", "100000")],
)
def test_generate_refuses_nonsense_numbers_before_loading_anything(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--weights", str(tmp_path / "missing.h5"), flag, value, "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert f"argument {flag}" in line and value in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--threshold", "nan"), ("--threshold", "-0.5"), ("--svm-c", "inf"), ("--points", "0"), ("--seed", "-3")])
def test_evaluate_refuses_nonsense_numbers(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.evaluate_main(["--samples", str(tmp_path / "s.npz"), flag, value])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert f"argument {flag}" in one_error_line(capsys)


@pytest.mark.parametrize("flag, value, message", [
    ("--z-stddev", "inf", "argument --z-stddev"), ("--generator-learning-rate", "nan", "argument --generator-learning-rate"),
    ("--generator-beta-1", "nan", "generator_beta_1 = nan must be a finite number"),
    ("--mesh-margin", "inf", "mesh_margin = inf must be a finite number"),
    ("--seed", "4294967296", "seed = 4294967296 must be at most"),
])
def test_train_refuses_nonsense_numbers(tmp_path, capsys, flag, value, message):
    try:
        status = train_main(train_arguments(tmp_path, tmp_path / "out", ["--data-dir", str(tmp_path), flag, value]))
    except SystemExit as exit_request:
        status = exit_request.code
    assert status == EXIT_USER_ERROR
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, message", [
    (np.full((2, 200), np.nan, np.float32), "latent vector 0 holds NaN or infinite values"),
    (np.full((2, 200), 1e300), "latent vector 0 holds NaN or infinite values"),
    (np.zeros((2, 200), np.complex64), "expected real numbers, got a complex64 array"),
])
def test_generate_refuses_latents_that_are_not_finite(run_folder, tmp_path, capsys, values, message):
    latents = tmp_path / "hostile_latents.npy"
    np.save(latents, values)
    argv = ["--weights", str(run_folder / "generator_weights.h5"), "--interpolate", f"{latents}:0", "seed:1",
            "--output-dir", str(tmp_path / "out")]
    assert generate_main(argv) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert message in line and str(latents) in line
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_generate_refuses_a_negative_latent_seed(run_folder, tmp_path, capsys):
    argv = ["--weights", str(run_folder / "generator_weights.h5"), "--interpolate", "seed:-4", "seed:1", "--output-dir", str(tmp_path / "out")]
    assert generate_main(argv) == EXIT_USER_ERROR
    assert "latent 'seed:-4': seeds run from 0 to" in one_error_line(capsys)


@pytest.mark.parametrize("flag, value", [("--voxel-size", "inf"), ("--threshold", "nan"), ("--image-size", "100000")])
def test_visualize_refuses_nonsense_numbers(tmp_path, capsys, flag, value):
    np.save(tmp_path / "box.npy", np.ones((4, 4, 4), np.uint8))
    assert visualize([str(tmp_path / "box.npy"), flag, value, "--output-dir", str(tmp_path / "out")]) == EXIT_USER_ERROR
    assert flag in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- 6. zip in .npz


def test_an_encrypted_array_in_a_samples_file_is_refused(tmp_path, good_data_dir, capsys):
    path = str(tmp_path / "samples.npz")
    np.savez(path, packed=GOOD_PACKED, shape=np.array([2, 64, 64, 64]))
    content = bytearray(open(path, "rb").read())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := content.find(signature, start)) >= 0:
            content[start + flags_at] |= 0x1
            start += 4
    open(path, "wb").write(bytes(content))
    arguments = ["--samples", path, "--data-dir", good_data_dir, "--cache-dir", str(tmp_path / "cache"), "--distances", "iou"]
    assert evaluate.evaluate_main(arguments) == EXIT_USER_ERROR
    assert f"{path}: array packed.npy is encrypted" in one_error_line(capsys)
