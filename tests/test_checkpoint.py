"""Checkpoints and resuming, in-process on the TensorFlow backend with small stand-in networks (tests/fast_models.py).

Exact resume: a run stopped by Ctrl-C mid-epoch and resumed gives the same per-step losses, epoch means and final
weights as an uninterrupted run (TensorFlow on CPU, same seed; no determinism flags were needed; JAX, whose step keeps
its state outside the Keras variables, through tests/resume_probe.py in a subprocess). Also: a damaged
newest checkpoint is skipped, temporary leftovers are removed, a NaN stops training with the step and the last good
checkpoint named, config mismatches name the fields, and a checkpoint holding a pickle is refused, never unpickled.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import threedgan.train as train_module
from tests.conftest import write_tree
from tests.fast_models import fast_builders
from tests.step_hooks import checkpoint_steps, h5_arrays, raise_signals, wrap_step
from threedgan import checkpoint as checkpoints
from threedgan.cli import train_main
from threedgan.config import Config
from threedgan.errors import WeightsError
from threedgan.safe_io import file_sha256

# 6 volumes in batches of 2: 3 steps an epoch, 6 in the two epochs of a run; a checkpoint every 2 steps.
EPOCHS = 2
STEPS_PER_EPOCH = 3
CHECKPOINT_EVERY_STEPS = 2


@pytest.fixture
def fast_networks(monkeypatch):
    build_generator, build_discriminator = fast_builders()
    monkeypatch.setattr(train_module, "build_generator", build_generator)
    monkeypatch.setattr(train_module, "build_discriminator", build_discriminator)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tree(str(tmp_path_factory.mktemp("data")), categories={"chair": 0}, models=3, rotations=2)


def arguments(data_dir, root, name, *extra):
    return [
        "--data-dir", data_dir, "--category", "chair", "--batch-size", "2", "--epochs", str(EPOCHS), "--seed", "3",
        "--output-dir", str(root / name), "--logdir", str(root / "logs"), "--run-name", name,
        "--image-every-steps", "0", "--checkpoint-every-steps", str(CHECKPOINT_EVERY_STEPS), "--checkpoint-every-minutes", "0",
        "--cache-dir", str(root / "cache"), *extra,
    ]


def step_scalars(logdir, tag):
    events = EventAccumulator(logdir)
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    """An uninterrupted run: 6 steps, checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        build_generator, build_discriminator = fast_builders()
        monkeypatch.setattr(train_module, "build_generator", build_generator)
        monkeypatch.setattr(train_module, "build_discriminator", build_discriminator)
        assert train_main(arguments(data_dir, root, "reference")) == 0
    return root, str(root / "reference")


def test_ctrl_c_writes_a_checkpoint_and_resuming_matches_an_uninterrupted_run(
    reference_run, data_dir, tmp_path, fast_networks, monkeypatch, capsys
):
    reference_root, reference_dir = reference_run
    stop_after = 5  # mid-epoch (epoch 2, batch 2) and not a checkpoint step: the stop itself must write ckpt 5
    handler_before = signal.getsignal(signal.SIGINT)
    original = wrap_step(monkeypatch, stop_after, raise_signals(signal.SIGINT))
    argv = arguments(data_dir, tmp_path, "resumed", "--keep-checkpoints", "2")
    assert train_main(argv) == 130
    output_dir = str(tmp_path / "resumed")
    message = capsys.readouterr().err.strip().splitlines()
    expected_checkpoint = os.path.join(output_dir, "checkpoints", "ckpt-00000005")
    weights = os.path.join(output_dir, "generator_weights.h5")
    assert message == [
        f"interrupted by SIGINT after step 5: checkpoint in {expected_checkpoint}; run the same command again to resume; "
        f"the weights of step 5 are in {weights} (python scripts/generate.py --weights {weights})"
    ]
    assert checkpoint_steps(output_dir) == [4, 5], "keeps the newest 2"
    assert os.path.exists(weights), "a stopped run leaves the weights generate.py reads (tests/test_watching.py)"
    assert signal.getsignal(signal.SIGINT) is handler_before, "the handler is put back"

    monkeypatch.setattr(train_module, "make_train_step", original)
    assert train_main(argv) == 0
    assert checkpoint_steps(output_dir) == [5, 6]

    for tag in ("step/g_loss", "step/d_loss", "step/d_accuracy", "epoch/g_loss", "epoch/d_loss"):
        reference = step_scalars(str(reference_root / "logs" / "reference"), tag)
        resumed = step_scalars(str(tmp_path / "logs" / "resumed"), tag)
        assert resumed == reference, tag
    assert len(step_scalars(str(tmp_path / "logs" / "resumed"), "step/g_loss")) == EPOCHS * STEPS_PER_EPOCH
    for name in ("generator_weights.h5", "discriminator_weights.h5"):
        reference, resumed = h5_arrays(os.path.join(reference_dir, name)), h5_arrays(os.path.join(output_dir, name))
        assert reference.keys() == resumed.keys()
        for key in reference:
            np.testing.assert_array_equal(resumed[key], reference[key], err_msg=f"{name}:{key}")
    last = checkpoints.read_checkpoint(os.path.join(output_dir, "checkpoints", "ckpt-00000006"))
    reference_last = checkpoints.read_checkpoint(os.path.join(reference_dir, "checkpoints", "ckpt-00000006"))
    for group in checkpoints.OPTIMIZER_GROUPS:
        for (path, value), (_, expected) in zip(last.optimizer_values[group], reference_last.optimizer_values[group]):
            np.testing.assert_array_equal(value, expected, err_msg=path)
    assert last.state.rng_state == reference_last.state.rng_state


def test_max_steps_stops_mid_epoch_and_a_larger_budget_continues_exactly(reference_run, data_dir, tmp_path, fast_networks):
    reference_root, _ = reference_run
    argv = arguments(data_dir, tmp_path, "budget")
    assert train_main(argv + ["--max-steps", "4"]) == 0
    assert checkpoint_steps(str(tmp_path / "budget")) == [2, 4]
    state = checkpoints.read_checkpoint(str(tmp_path / "budget" / "checkpoints" / "ckpt-00000004")).state
    assert (state.epoch, state.batch_index) == (1, 1), "stopped inside the second epoch, and the checkpoint says where"
    assert train_main(argv) == 0
    reference = step_scalars(str(reference_root / "logs" / "reference"), "step/g_loss")
    assert step_scalars(str(tmp_path / "logs" / "budget"), "step/g_loss") == reference


def test_sigterm_also_checkpoints_and_exits_143(data_dir, tmp_path, fast_networks, monkeypatch, capsys):
    wrap_step(monkeypatch, 1, raise_signals(signal.SIGTERM))
    assert train_main(arguments(data_dir, tmp_path, "terminated")) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM after step 1: checkpoint in" in capsys.readouterr().err
    assert checkpoint_steps(str(tmp_path / "terminated")) == [1]


def test_a_damaged_newest_checkpoint_is_skipped_and_leftovers_removed(
    reference_run, data_dir, tmp_path, fast_networks, caplog
):
    _, reference_dir = reference_run
    output_dir = tmp_path / "reference"
    shutil.copytree(reference_dir, output_dir)
    folder = output_dir / "checkpoints"
    weights = folder / "ckpt-00000006" / "generator_weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # as an old non-atomic writer would leave it
    (folder / ".tmp-ckpt-00000008-abc").mkdir()  # what a kill during a checkpoint write leaves
    (folder / ".tmp-ckpt-00000008-abc" / "optimizers.h5").write_bytes(b"half")
    (output_dir / ".tmp-x1y2.h5").write_bytes(b"half")  # a kill during the final weights' write

    assert train_main(arguments(data_dir, tmp_path, "reference", "--epochs", "3")) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("skipping damaged checkpoint" in text and "ckpt-00000006" in text and "generator_weights.h5" in text for text in warnings)
    assert checkpoint_steps(str(output_dir)) == [6, 8, 9]
    assert sorted(os.listdir(folder)) == ["ckpt-00000006", "ckpt-00000008", "ckpt-00000009"], "no temporary folders"
    assert not [name for name in os.listdir(output_dir) if name.startswith(".tmp-")]
    # Steps 5 and 6 were done again from checkpoint 4: the same losses as the first time.
    reference = dict(step_scalars(os.path.join(os.path.dirname(reference_dir), "logs", "reference"), "step/g_loss"))
    again = step_scalars(str(tmp_path / "logs" / "reference"), "step/g_loss")
    assert [step for step, _ in again] == [5, 6, 7, 8, 9]
    assert [value for step, value in again if step <= 6] == [reference[5], reference[6]]
    for path in (folder / "ckpt-00000006", folder / "ckpt-00000009"):
        checkpoints.read_checkpoint(str(path))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference_run, data_dir, tmp_path, fast_networks, monkeypatch, capsys
):
    _, reference_dir = reference_run
    output_dir = tmp_path / "diverged"
    output_dir.mkdir()
    for name in ("generator_weights.h5", "config.json"):  # an earlier run's results, which must survive
        shutil.copy(os.path.join(reference_dir, name), output_dir / name)
    before = {name: (output_dir / name).read_bytes() for name in os.listdir(output_dir)}

    def make_nan(step, metrics):
        return dict(metrics, g_loss=metrics["g_loss"] * float("nan"))

    wrap_step(monkeypatch, 5, make_nan)
    assert train_main(arguments(data_dir, tmp_path, "diverged")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    good = os.path.join(str(output_dir), "checkpoints", "ckpt-00000004")
    assert len(error) == 1 and error[0].startswith("error: non-finite loss at step 5 (g_loss=nan")
    assert error[0].endswith(f"training stopped, the last good checkpoint is {good} (step 4)")
    assert checkpoint_steps(str(output_dir)) == [2, 4]
    checkpoints.read_checkpoint(good)
    assert {name: (output_dir / name).read_bytes() for name in before} == before


def test_nan_weight_is_never_written_to_a_checkpoint(data_dir, tmp_path, fast_networks, monkeypatch, capsys):
    def poison_weight(step, metrics):
        variable = step.models["generator"].trainable_variables[0]  # TensorFlow: the variables are the state
        variable.assign(np.full(variable.shape, np.nan, "float32"))

    wrap_step(monkeypatch, 4, poison_weight)  # after step 4's losses, before checkpoint 4
    assert train_main(arguments(data_dir, tmp_path, "poisoned")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: non-finite values in generator variable fast_generator_dense/kernel after step 4")
    assert error.endswith("(step 2)") and checkpoint_steps(str(tmp_path / "poisoned")) == [2]


def test_config_mismatch_missing_checkpoint_and_no_resume(reference_run, data_dir, tmp_path, fast_networks, capsys):
    _, reference_dir = reference_run
    output_dir = tmp_path / "reference"
    shutil.copytree(reference_dir, output_dir)
    status = train_main(arguments(data_dir, tmp_path, "reference", "--seed", "5", "--generator-learning-rate", "0.001"))
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: checkpoint ") and "was written with another config" in error[0]
    assert f"generator_learning_rate {Config().generator_learning_rate!r} there, 0.001 now" in error[0] and "seed 3 there, 5 now" in error[0]

    assert train_main(arguments(data_dir, tmp_path, "empty", "--resume")) == 2
    assert capsys.readouterr().err.strip() == f"error: --resume: no checkpoint to resume from in {tmp_path / 'empty' / 'checkpoints'}"

    assert train_main(arguments(data_dir, tmp_path, "reference", "--epochs", "1", "--no-resume")) == 0
    set_aside = [name for name in os.listdir(output_dir) if name.startswith("checkpoints-replaced-")]
    assert len(set_aside) == 1 and sorted(os.listdir(output_dir / set_aside[0])) == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000006"]
    assert checkpoint_steps(str(output_dir)) == [2, 3], "a fresh run of one epoch"


def test_an_output_folder_in_use_is_refused(data_dir, tmp_path, fast_networks, capsys):
    (tmp_path / "busy").mkdir()
    with checkpoints.exclusive_use(str(tmp_path / "busy")):
        assert train_main(arguments(data_dir, tmp_path, "busy")) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: another training run is using output folder {tmp_path / 'busy'}")


def copy_checkpoint(reference_dir, tmp_path, step=4):
    """A copy of a mid-epoch checkpoint (it has an epoch_order.npy), alone in a checkpoints folder."""
    target = tmp_path / "out" / "checkpoints" / checkpoints.checkpoint_name(step)
    shutil.copytree(os.path.join(reference_dir, "checkpoints", checkpoints.checkpoint_name(step)), target)
    return target


def rewrite_manifest(folder, name):
    """Updates state.json's size and hash of `name`, as someone tampering with a checkpoint could."""
    state_path = folder / checkpoints.STATE_FILENAME
    document = json.loads(state_path.read_text())
    document["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(str(folder / name))}
    state_path.write_text(json.dumps(document))


class CreatesAFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_in_a_checkpoint_is_refused_not_unpickled(reference_run, data_dir, tmp_path, fast_networks, capsys):
    _, reference_dir = reference_run
    folder = copy_checkpoint(reference_dir, tmp_path)
    marker = tmp_path / "code-ran"
    payload = np.empty(1, dtype=object)
    payload[0] = CreatesAFileWhenUnpickled(str(marker))
    np.save(folder / checkpoints.EPOCH_ORDER_FILENAME, payload, allow_pickle=True)
    rewrite_manifest(folder, checkpoints.EPOCH_ORDER_FILENAME)
    with pytest.raises(WeightsError, match="without unpickling Python objects; refusing it"):
        checkpoints.read_checkpoint(str(folder))
    assert train_main(arguments(data_dir, tmp_path, "out")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: every checkpoint in") and "refusing it" in error[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda document: document["files"].update({"../config.json": document["files"]["config.json"]}), "lists files"),
        (lambda document: document.update(step="4"), "field 'step' is missing or malformed"),
        (lambda document: document.update(format_version=99), "is not a format-1 checkpoint state"),
    ],
)
def test_a_tampered_state_file_is_refused(reference_run, tmp_path, tamper, message):
    folder = copy_checkpoint(reference_run[1], tmp_path)
    state_path = folder / checkpoints.STATE_FILENAME
    document = json.loads(state_path.read_text())
    tamper(document)
    state_path.write_text(json.dumps(document))
    with pytest.raises(WeightsError, match=message):
        checkpoints.read_checkpoint(str(folder))


def test_a_checkpoint_of_another_architecture_is_refused(reference_run, tmp_path):
    """The shape checks of `restore` run before any variable changes (here against the chapter's networks)."""
    from threedgan.config import Config

    checkpoint = checkpoints.read_checkpoint(str(copy_checkpoint(reference_run[1], tmp_path)))
    config = Config.from_preset("book", batch_size=2)
    gan = train_module.Gan.build(config)
    with pytest.raises(WeightsError, match=r"does not fit: its generator_optimizer has 10 variables, this run's has \d+"):
        checkpoints.restore(gan, checkpoint)


def test_resume_is_exact_on_jax(tmp_path):
    """The JAX step keeps its state outside the Keras variables: checkpoints sync it out and reload it."""
    pytest.importorskip("jax")
    probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_probe.py")
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, probe, str(tmp_path)], env=environment, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("PROBE "):])
    assert report["backend"] == "jax" and report["stopped_after_steps"] == 5
    assert report["resumed_losses"] == report["reference_losses"]
    assert report["weights_identical"] and report["epoch_metrics_identical"]


def test_the_package_never_loads_pickles():
    """Every loader reads arrays, JSON or HDF5 only: no pickle, every np.load refuses object arrays, no full models."""
    import ast

    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "threedgan")
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        source = open(os.path.join(package, name)).read()
        assert "import pickle" not in source and "torch.load(" not in source and "load_model(" not in source, name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
                    keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                    refused = keywords.get("allow_pickle")
                    assert isinstance(refused, ast.Constant) and refused.value is False, f"{name}:{node.lineno}"
