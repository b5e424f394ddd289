"""Watching and interrupting a run (issue 14): metrics, meshes and the config in TensorBoard and metrics.jsonl,
honest progress, clock checkpoints, SIGTERM/SIGKILL, quiet start-up.

In-process runs use the stand-in networks of tests/fast_models.py (TensorFlow backend, CPU); the kill test runs
them in a subprocess (tests/watch_probe.py) and SIGKILLs it after its first clock checkpoint. No test waits on the
clock: clock checkpoints are due after 1e-9 minutes, i.e. after every step, and progress runs on a fake clock.
"""
import io
import logging
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2 as hparams_plugin_data
from tensorboard.plugins.mesh import metadata as mesh_metadata
from tensorboard.plugins.mesh import plugin_data_pb2 as mesh_plugin_data
from tensorboard.util import tensor_util

import threedgan.train as train_module
from tests.conftest import write_tree
from tests.fast_models import fast_builders
from tests.step_hooks import checkpoint_steps, h5_arrays, raise_signals, wrap_step
from threedgan import checkpoint as checkpoints
from threedgan import monitor, quiet
from threedgan.cli import generate_main, train_main, train_parser
from threedgan.config import Config
from threedgan.progress import Progress

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 6 volumes in batches of 2: 3 steps an epoch.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tree(str(tmp_path_factory.mktemp("data")), categories={"chair": 0}, models=3, rotations=2)


@pytest.fixture
def fast_networks(monkeypatch):
    build_generator, build_discriminator = fast_builders()
    monkeypatch.setattr(train_module, "build_generator", build_generator)
    monkeypatch.setattr(train_module, "build_discriminator", build_discriminator)
    # generate.py builds its generator through threedgan.models: the same stand-in, so it reads these weights.
    monkeypatch.setattr("threedgan.models.build_generator", lambda config: fast_builders()[0](config))


def arguments(data_dir, root, name, *extra):
    return [
        "--data-dir", data_dir, "--category", "chair", "--batch-size", "2", "--epochs", "2", "--seed", "3",
        "--output-dir", str(root / name), "--logdir", str(root / "logs"), "--run-name", name,
        "--cache-dir", str(root / "cache"), "--image-every-steps", "0", "--mesh-every-steps", "0",
        "--metrics-every-steps", "0", "--set-metrics-every-steps", "0",
        "--checkpoint-every-steps", "2", "--checkpoint-every-minutes", "0", *extra,
    ]  # fmt: skip


def load_events(logdir):
    events = EventAccumulator(str(logdir), size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()
    return events


# ------------------------------------------------------------------------------------------ TensorBoard and jsonl


@pytest.fixture(scope="module")
def watched_run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    with pytest.MonkeyPatch.context() as patch:
        build_generator, build_discriminator = fast_builders()
        patch.setattr(train_module, "build_generator", build_generator)
        patch.setattr(train_module, "build_discriminator", build_discriminator)
        argv = arguments(
            data_dir, root, "watched", "--image-every-steps", "2", "--mesh-every-steps", "2", "--metrics-every-steps",
            "2", "--set-metrics-every-steps", "4", "--metrics-samples", "4", "--metrics-references", "3",
        )  # fmt: skip
        status = train_main(argv)
    return status, root / "watched", root / "logs" / "watched"


def test_metrics_reach_tensorboard_and_metrics_jsonl(watched_run):
    status, output_dir, run_logdir = watched_run
    assert status == 0
    events = load_events(run_logdir)
    steps = lambda tag: [event.step for event in events.Scalars(tag)]  # noqa: E731
    assert steps("metrics/occupancy") == [2, 4, 6] and steps("metrics/mean_pairwise_iou") == [2, 4, 6]
    for name in ("mmd_iou", "cov_iou", "1nna_iou"):
        assert steps(f"metrics/{name}") == [4], "set metrics only every 4 steps"
    records = monitor.read_metrics(str(output_dir))
    assert [(record["run"], record["step"], record["epoch"]) for record in records] == [("watched", 2, 0.6667), ("watched", 4, 1.3333), ("watched", 6, 2.0)]
    assert [set(record) >= {"mmd_iou", "cov_iou", "1nna_iou"} for record in records] == [False, True, False]
    for record in records:
        assert record["samples"] == 4 and record["references"] == 3 and 0 <= record["occupancy"] <= 1
        assert 0 <= record["mean_pairwise_iou"] <= 1 and record["seconds"] > 0
        (event,) = [event for event in events.Scalars("metrics/mean_pairwise_iou") if event.step == record["step"]]
        assert event.value == pytest.approx(record["mean_pairwise_iou"], rel=1e-6), "TensorBoard and jsonl agree"
    assert records[1]["1nna_iou"] == pytest.approx(events.Scalars("metrics/1nna_iou")[0].value)


def test_meshes_reach_the_mesh_plugin(watched_run):
    _, _, run_logdir = watched_run
    events = load_events(run_logdir)
    vertex_tags = [tag for tag in events.Tags()["tensors"] if tag.startswith("mesh/") and tag.endswith("_VERTEX")]
    assert vertex_tags, "at least one sample had something to mesh"
    for vertex_tag in vertex_tags:
        name = vertex_tag[: -len("_VERTEX")]
        vertices_event = events.Tensors(vertex_tag)[-1]
        faces_event = events.Tensors(f"{name}_FACE")[-1]
        assert [event.step for event in events.Tensors(vertex_tag)] == [2, 4, 6]
        plugin = events.SummaryMetadata(vertex_tag).plugin_data
        assert plugin.plugin_name == "mesh"
        parsed = mesh_metadata.parse_plugin_metadata(plugin.content)
        assert parsed.name == name and parsed.content_type == mesh_plugin_data.MeshPluginData.VERTEX
        assert parsed.components == mesh_metadata.get_components_bitmask(
            [mesh_plugin_data.MeshPluginData.VERTEX, mesh_plugin_data.MeshPluginData.FACE, mesh_plugin_data.MeshPluginData.COLOR]
        )
        vertices = tensor_util.make_ndarray(vertices_event.tensor_proto)
        faces = tensor_util.make_ndarray(faces_event.tensor_proto)
        assert vertices.dtype == np.float32 and vertices.shape[0] == 1 and vertices.shape[2] == 3
        assert list(parsed.shape) == list(vertices.shape)
        assert faces.dtype == np.int32 and faces.shape[0] == 1 and 0 <= faces.min() and faces.max() < vertices.shape[1]


def test_the_run_record_is_text_and_hparams_and_graphs_only_where_they_exist(watched_run):
    _, _, run_logdir = watched_run
    events = load_events(run_logdir)
    (text,) = events.Tensors("config")
    table = text.tensor_proto.string_val[0].decode()
    for row in ("| preset | `r1-ema` |", "| batch_size | `2` |", "| backend | `tensorflow` |", "| device | `CPU"):
        assert row in table
    assert "| keras_version |" in table and "| checkpoint_every_minutes | `0.0` |" in table
    plugin = events.SummaryMetadata("_hparams_/session_start_info").plugin_data
    assert plugin.plugin_name == "hparams"
    start = hparams_plugin_data.HParamsPluginData.FromString(plugin.content).session_start_info
    assert start.hparams["preset"].string_value == "r1-ema" and start.hparams["batch_size"].number_value == 2
    assert start.hparams["categories"].string_value == "chair" and start.hparams["backend"].string_value == "tensorflow"
    # The TensorFlow backend has graphs: one run folder per network.
    assert sorted(name for name in os.listdir(run_logdir) if name.startswith("graph_")) == ["graph_discriminator", "graph_generator"]


def test_no_graph_run_folders_where_the_backend_has_no_graphs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from threedgan.tensorboard_writer import SummaryWriter

    monkeypatch.setattr(SummaryWriter, "graphs_supported", staticmethod(lambda: False))  # as on JAX and PyTorch
    fake = SimpleNamespace(run_logdir=str(tmp_path / "run"), gan=SimpleNamespace(generator=None, discriminator=None))
    train_module.Trainer._write_graphs(fake)
    assert not os.path.exists(tmp_path / "run")


def test_training_metrics_match_evaluate_and_see_collapse(monkeypatch):
    from threedgan.data import VoxelDataset
    from threedgan.metrics import evaluate_sets

    rng = np.random.default_rng(0)
    volumes32 = rng.random((8, 32, 32, 32)) < 0.2
    dataset = VoxelDataset(np.packbits(volumes32.reshape(8, -1), axis=1), np.array([f"v{i}" for i in range(8)]), np.zeros(8, int), ["x"])
    config = Config(metrics_samples=5, metrics_references=6, batch_size=2)
    metrics = monitor.TrainingMetrics(config, dataset)
    references = np.repeat(np.repeat(np.repeat(volumes32[metrics.reference_indices], 2, 1), 2, 2), 2, 3).astype(np.uint8)
    samples = (rng.random((5, 64, 64, 64)) < 0.3).astype(np.uint8)
    monkeypatch.setattr(monitor, "generate_occupancy", lambda generator, latents, batch_size: samples)
    results = metrics.evaluate(None, with_set_metrics=True)
    expected = evaluate_sets(samples, references, distances=("iou",))
    for ours, theirs in [("occupancy", "sample_occupancy"), ("reference_occupancy", "reference_occupancy"),
                         ("mean_pairwise_iou", "mean_pairwise_iou_samples"), ("mmd_iou", "mmd_iou"),
                         ("cov_iou", "cov_iou"), ("1nna_iou", "1nna_iou")]:  # fmt: skip
        assert results[ours] == pytest.approx(expected[theirs]), ours
    assert results["samples"] == 5 and results["references"] == 6 and len(set(metrics.reference_indices)) == 6

    collapsed = np.repeat(samples[:1], 5, axis=0)
    monkeypatch.setattr(monitor, "generate_occupancy", lambda generator, latents, batch_size: collapsed)
    results = metrics.evaluate(None, with_set_metrics=False)
    assert results["mean_pairwise_iou"] == 1.0 and "mmd_iou" not in results
    assert metrics.evaluations == 2 and metrics.seconds > 0


def test_metrics_are_measured_beside_training_and_all_written_by_the_end(data_dir, tmp_path, fast_networks, monkeypatch):
    """The host's share of the metrics (distances, writing) runs on the host-work thread while the next steps train:
    the measurement of step 2 waits until the training thread has run step 3, which could not happen if both ran on
    one thread. And every line is in metrics.jsonl when `train` returns."""
    step_three_ran = threading.Event()
    measured_on = []
    measure = monitor.TrainingMetrics.measure

    def waiting_measure(self, samples, seconds, with_set_metrics):
        measured_on.append(threading.current_thread().name)
        if len(measured_on) == 1:
            assert step_three_ran.wait(timeout=120), "training did not go on while step 2's metrics were measured"
        return measure(self, samples, seconds, with_set_metrics)

    monkeypatch.setattr(monitor.TrainingMetrics, "measure", waiting_measure)
    wrap_step(monkeypatch, 3, lambda step, metrics: step_three_ran.set())
    argv = arguments(data_dir, tmp_path, "beside", "--metrics-every-steps", "2", "--metrics-samples", "4",
                     "--metrics-references", "3", "--checkpoint-every-steps", "0", "--checkpoint-every-minutes", "10")
    assert train_main(argv) == 0
    assert [record["step"] for record in monitor.read_metrics(str(tmp_path / "beside"))] == [2, 4, 6]
    assert measured_on and all(name.startswith("threedgan-host") for name in measured_on), measured_on


def test_host_work_keeps_order_and_raises_in_the_training_thread(caplog):
    done = []
    with train_module._HostWork() as work:
        for index in range(5):
            work.submit(done.append, index)
            assert len(work._pieces) <= work.OUTSTANDING
        work.wait()
        assert done == [0, 1, 2, 3, 4]
        work.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            work.wait()
    # A piece that fails while the run leaves for another reason is logged, not raised over that reason.
    with pytest.raises(KeyboardInterrupt):
        with train_module._HostWork() as work:
            work.submit(lambda: 1 / 0)
            raise KeyboardInterrupt
    assert any("failed while the run was stopping" in record.getMessage() for record in caplog.records)
    with pytest.raises(ZeroDivisionError):
        with train_module._HostWork() as work:
            work.submit(lambda: 1 / 0)


def test_metrics_log_drops_its_own_lines_past_a_resumed_step(tmp_path):
    log = monitor.MetricsLog(str(tmp_path), "run-a")
    other = monitor.MetricsLog(str(tmp_path), "run-b")
    for step in (100, 200, 300):
        log.append(step, 0, {"occupancy": 0.1, "mean_pairwise_iou": float("nan")})
    other.append(300, 0, {"occupancy": 0.2})
    with open(log.path, "a") as handle:
        handle.write('{"run": "run-a", "st')  # a line a kill cut short
    assert log.drop_after(200) == 2
    assert [(record["run"], record["step"]) for record in monitor.read_metrics(log.path)] == [
        ("run-a", 100), ("run-a", 200), ("run-b", 300)
    ]
    assert monitor.read_metrics(str(tmp_path))[0]["mean_pairwise_iou"] is None, "NaN is written as JSON null"


def test_tensorboard_mesh_is_a_closed_outward_surface():
    import trimesh

    volume = np.zeros((64, 64, 64), np.float32)
    volume[10:40, 20:50, 4:60] = 0.9  # taller (z) than wide
    vertices, faces, colors = monitor.tensorboard_mesh(volume)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0, "faces wound outwards"
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    assert extent[1] == max(extent), "z (up in the data) is three.js' y (up)"
    assert colors.dtype == np.uint8 and colors.shape == vertices.shape
    assert monitor.tensorboard_mesh(np.zeros((64, 64, 64))) is None


# ---------------------------------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_shows_epochs_and_the_whole_runs_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(30_000, 300, 100, stream=stream, clock=clock)
    clock.now = 20.0  # the first step compiles
    progress.step_done(1, 0, 1)
    progress.synced(1, {"g_loss": 0.7, "d_loss": 1.4, "d_accuracy": 0.5})
    for step in range(2, 11):
        clock.now += 0.5
        progress.step_done(step, 0, step)
    progress.synced(10)
    assert progress.first_step_seconds == 20.0 and progress.seconds_per_step() == pytest.approx(0.5)
    line = progress.line()
    assert line.startswith("epoch 1/100 · step     10/30,000 · g_loss 0.700 · d_loss 1.400 · d_acc 0.500")
    assert "0.500 s/step" in line and "ETA 4:09:55" in line  # 29,990 steps left at 0.5 s
    assert progress.estimated_total_seconds() == pytest.approx(20.0 + 0.5 * 29_999)
    progress.end_epoch(1)
    assert stream.getvalue().splitlines()[-1].startswith("epoch 1/100 · step     10/30,000 ·"), "the epoch just done"
    assert progress.line().startswith("epoch 2/100 · step     10/30,000 ·")


def test_progress_measures_the_step_time_after_every_variant_has_compiled():
    # Lazy R1: step 1 compiles the R1 variant, step 2 the plain one; the rate must not count the second compilation.
    clock = FakeClock()
    progress = Progress(1_000, 100, 10, stream=io.StringIO(), clock=clock, warmup_steps=2)
    for step, seconds in ((1, 20.0), (2, 5.0), (3, 0.02), (4, 0.02)):
        clock.now += seconds
        progress.step_done(step, 0, step)
        progress.synced(step)
    assert progress.first_step_seconds == 20.0
    assert progress.warmup_seconds == 25.0
    assert progress.seconds_per_step() == pytest.approx(0.02)
    assert progress.estimated_total_seconds() == pytest.approx(25.0 + 0.02 * 998)


def test_recipe_counts_the_steps_until_both_variants_have_run():
    from threedgan.training_step import Recipe

    lazy = Recipe(loss="logistic", r1_gamma=10.0, r1_interval=4)
    # Iteration 0 adds R1 and 1 does not; from iteration 1 on, the next R1 comes at iteration 4.
    assert [lazy.steps_to_compile(start) for start in range(5)] == [2, 4, 3, 2, 2]
    assert Recipe(r1_gamma=0.0).steps_to_compile(7) == 1
    assert Recipe(loss="logistic", r1_gamma=10.0, r1_interval=1).steps_to_compile(0) == 1


def test_progress_speaks_every_ten_seconds_while_a_step_is_slow():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(100, 10, 10, start_step=40, stream=stream, clock=clock)
    assert progress.beat(), "the first line comes at once"
    clock.now = 9.0
    assert not progress.beat()
    clock.now = 11.0
    assert progress.beat()
    assert stream.getvalue().splitlines()[-1].endswith("step 41 running for 0:11 (the first compiles)")
    assert stream.getvalue().splitlines()[-1].startswith("epoch 5/10 · step  40/100")
    progress.step_done(41, 4, 1)
    progress.set_status("metrics")
    clock.now = 30.0
    assert progress.beat() and stream.getvalue().splitlines()[-1].endswith("metrics for 0:19")


def test_on_a_terminal_log_lines_do_not_land_on_the_progress_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, clock = Terminal(), FakeClock()
    handler = logging.StreamHandler(terminal)
    logging.getLogger().addHandler(handler)
    progress = Progress(100, 10, 10, stream=terminal, heartbeat_seconds=0, clock=clock)
    try:
        progress.start()
        progress.step_done(1, 0, 1)
        assert terminal.getvalue().startswith("\repoch 1/10 · step   1/100")
        logging.getLogger("threedgan.test").warning("a warning")
        before, after = terminal.getvalue().split("a warning")
        assert before.endswith(" \r") and after == "\n", "the progress line was wiped first"
        clock.now = 1.0
        progress.step_done(2, 0, 2)
        assert terminal.getvalue().endswith("\n") is False and "step   2/100" in terminal.getvalue().split("\n")[-1]
    finally:
        progress.close()
        logging.getLogger().removeHandler(handler)
    assert terminal.getvalue().endswith("\n") and handler.filters == []


def test_progress_eta_respects_the_time_budget():
    clock = FakeClock()
    progress = Progress(10_000, 100, 100, time_budget_seconds=600, stream=io.StringIO(), clock=clock)
    clock.now = 2.0
    progress.step_done(1, 0, 1)
    progress.synced(1)
    clock.now = 102.0
    progress.step_done(101, 1, 1)
    progress.synced(101)  # 1 s a step: 9,899 s to the last step, but the budget ends in 498 s
    assert progress.remaining_seconds() == pytest.approx(498.0)
    assert "ETA 8:18 (time budget)" in progress.line()


def test_help_shows_every_default():
    parser = train_parser()
    fields = set(Config().to_dict())
    for action in parser._actions:
        if action.dest in fields:
            assert "default" in (action.help or ""), action.dest
    text = parser.format_help()
    for shown in ("default 100)", "--epochs EPOCHS       default 100", "(default 10.0)", "default 32 in r1-ema"):
        assert shown in " ".join(text.split()) or shown in text, shown


# ------------------------------------------------------------------------------------ checkpoints and signals


def test_clock_checkpoints_come_without_step_checkpoints(data_dir, tmp_path, fast_networks, caplog):
    caplog.set_level(logging.INFO, logger="threedgan")
    argv = arguments(data_dir, tmp_path, "clock", "--epochs", "1", "--checkpoint-every-steps", "0", "--checkpoint-every-minutes", "1e-9")
    assert train_main(argv) == 0
    assert checkpoint_steps(str(tmp_path / "clock")) == [1, 2, 3], "due after every step, the newest 3 kept"
    assert any("wrote checkpoint" in record.getMessage() and "ckpt-00000001" in record.getMessage() for record in caplog.records)


def test_the_start_up_estimate_waits_until_both_step_variants_have_compiled(data_dir, tmp_path, fast_networks, caplog):
    caplog.set_level(logging.INFO, logger="threedgan")
    assert train_main(arguments(data_dir, tmp_path, "estimate")) == 0  # lazy R1, 2 epochs of 3 steps
    lines = [record.getMessage() for record in caplog.records if "compilation included" in record.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("first 2 steps "), lines
    assert "3 steps to go" in lines[0] and "on the CPU: CPUs are for tests" in lines[0]


def test_sigterm_writes_the_top_level_weights_that_generate_reads(data_dir, tmp_path, fast_networks, monkeypatch, capsys, caplog):
    wrap_step(monkeypatch, 3, raise_signals(signal.SIGTERM))
    output_dir = tmp_path / "terminated"
    assert train_main(arguments(data_dir, tmp_path, "terminated")) == 128 + signal.SIGTERM
    weights = output_dir / "generator_weights.h5"
    error = capsys.readouterr().err
    assert "interrupted by SIGTERM after step 3: checkpoint in" in error
    assert f"the weights of step 3 are in {weights} (python scripts/generate.py --weights {weights})" in error
    assert any("SIGTERM: stopping after this step" in record.getMessage() for record in caplog.records)
    assert checkpoint_steps(str(output_dir)) == [2, 3]
    assert {"generator_weights.h5", "discriminator_weights.h5", "config.json"} <= set(os.listdir(output_dir))
    saved, checkpointed = h5_arrays(weights), h5_arrays(output_dir / "checkpoints" / "ckpt-00000003" / "generator_weights.h5")
    assert saved.keys() == checkpointed.keys() and all(np.array_equal(saved[k], checkpointed[k]) for k in saved)
    assert generate_main(["--weights", str(weights), "--num", "2", "--format", "npy", "--output-dir", str(tmp_path / "g")]) == 0
    assert Config.load(str(output_dir)).batch_size == 2


def test_a_second_sigterm_exits_143_and_keeps_the_steps(data_dir, tmp_path, fast_networks, monkeypatch, capsys, caplog):
    wrap_step(monkeypatch, 3, raise_signals(signal.SIGTERM, signal.SIGTERM))
    assert train_main(arguments(data_dir, tmp_path, "twice")) == 143
    assert "interrupted by SIGTERM after step 3" in capsys.readouterr().err
    assert checkpoint_steps(str(tmp_path / "twice")) == [2, 3], "step 3 was not dropped"
    assert (tmp_path / "twice" / "generator_weights.h5").exists()
    assert any("SIGTERM again: already stopping" in record.getMessage() for record in caplog.records)


def test_a_stop_signal_cuts_metrics_short(data_dir, tmp_path, fast_networks, monkeypatch):
    reached = []

    def generate(self, generator):  # the metrics' share on the training thread
        signal.raise_signal(signal.SIGINT)
        reached.append(True)  # never runs: the handler raises at the next instruction
        return None, 0.0

    monkeypatch.setattr(monitor.TrainingMetrics, "generate", generate)
    argv = arguments(data_dir, tmp_path, "cut", "--metrics-every-steps", "2", "--checkpoint-every-steps", "0", "--checkpoint-every-minutes", "10")
    assert train_main(argv) == 128 + signal.SIGINT
    assert reached == [] and not (tmp_path / "cut" / "metrics.jsonl").exists()
    assert checkpoint_steps(str(tmp_path / "cut")) == [2], "the stop still checkpoints the step"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL of a child process needs a POSIX system")
def test_a_run_killed_after_its_first_clock_checkpoint_resumes(data_dir, tmp_path, fast_networks, capsys, caplog):
    caplog.set_level(logging.INFO, logger="threedgan")
    argv = arguments(
        data_dir, tmp_path, "killed", "--epochs", "100000", "--checkpoint-every-steps", "0",
        "--checkpoint-every-minutes", "1e-9",
    )  # fmt: skip
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPOSITORY, "tests", "watch_probe.py"), *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPOSITORY,
    )  # fmt: skip
    watchdog = threading.Timer(300, process.kill)  # only if the line never comes
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if "wrote checkpoint" in line:
                process.kill()  # SIGKILL: no handler, no last checkpoint
                break
    finally:
        watchdog.cancel()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    steps = checkpoint_steps(str(tmp_path / "killed"))
    assert steps and steps[0] >= 1
    assert not (tmp_path / "killed" / "generator_weights.h5").exists()

    # generate.py pointed at the missing top-level weights names the newest checkpoint's.
    missing = tmp_path / "killed" / "generator_weights.h5"
    assert generate_main(["--weights", str(missing), "--output-dir", str(tmp_path / "g")]) == 2
    error = capsys.readouterr().err.strip()
    newest = checkpoint_steps(str(tmp_path / "killed"))[-1]
    expected = tmp_path / "killed" / "checkpoints" / f"ckpt-{newest:08d}" / "generator_weights.h5"
    assert error == f"error: weights file not found: {missing}; the run's newest checkpoint has its weights: pass --weights {expected}"

    resumed = arguments(data_dir, tmp_path, "killed", "--epochs", "100000", "--max-steps", str(newest + 2))
    assert train_main(resumed) == 0
    assert any(record.getMessage().startswith(f"resuming from ") and f"step {newest}," in record.getMessage() for record in caplog.records)
    assert checkpoint_steps(str(tmp_path / "killed"))[-1] == newest + 2


# ---------------------------------------------------------------------------------------------------- start-up


def test_filtered_stderr_drops_only_the_known_noise(capfd):
    with quiet.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.2 1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"E0000 00:00:1.2 1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"something the user must see\n")
    assert capfd.readouterr().err == "something the user must see\n"


def test_quiet_startup_keeps_the_users_settings(monkeypatch):
    monkeypatch.setattr(quiet, "_done", False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet.quiet_startup()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.setattr(quiet, "_done", False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    quiet.quiet_startup(debug=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ, "--debug shows everything"
    quiet.quiet_startup()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == ("2" if quiet.nvidia_driver_present() else "3")


def test_the_train_script_starts_quietly(tmp_path):
    """The real entry point, in a fresh process: TensorFlow is imported and its devices created, and stderr holds
    only the user's error."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    environment["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, "scripts", "train.py"), "--data-dir", str(tmp_path / "missing")],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: data path not found: {tmp_path / 'missing'}"]
