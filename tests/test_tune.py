"""Hyper-parameter search: the space, the split, one tiny trial on CPU, resuming from the JSON trials file, the best
config in train.py, and the hparams data in TensorBoard."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hyperopt.pyll import stochastic

from threedgan import tune
from threedgan.cli import config_from_train_arguments, train_parser
from threedgan.config import Config
from threedgan.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tune.py"


def test_space_samples_valid_configs():
    space = tune.search_space(batch_sizes=(16, 32))
    base = Config.from_preset("book")
    thresholds = set()
    for seed in range(200):
        params = stochastic.sample(space, rng=np.random.default_rng(seed))
        assert set(params) == set(space)
        config = base.replace(**params)  # replace() validates
        assert config.batch_size in (16, 32)
        for name, (_, low, high) in tune.CONTINUOUS_SPACE.items():
            value = params[name]
            assert value is None or low <= value <= high, name
        thresholds.add(config.discriminator_accuracy_threshold is None)
    assert thresholds == {True, False}, "both branches of the D-update choice are sampled"


@pytest.mark.parametrize("preset", ["book", "paper"])
def test_presets_are_points_of_the_space(preset):
    params = tune.preset_params(preset)
    values = tune.values_from_params(params)
    assert tune.params_from_values(values) == params
    assert tune.values_from_params(params, batch_sizes=(2,)) is None


def test_split_keeps_rotations_of_a_model_together(tmp_path):
    from tests.conftest import write_tree
    from threedgan.data import load_dataset

    data_dir = write_tree(str(tmp_path), categories={"chair": 0, "table": 1}, splits=("train",), models=5, rotations=3)
    dataset = load_dataset(data_dir, ["chair", "table"], use_cache=False)
    training, references = tune.split_by_model(dataset, 0.4)
    training_models = {tune.model_name(name) for name in training.names}
    reference_models = [tune.model_name(name) for name in references.names]
    assert not training_models & set(reference_models)
    assert len(reference_models) == len(set(reference_models)) == 4, "one rotation of 2 models per category"
    assert len(training) == 2 * 3 * 3
    shuffled = dataset.subset(np.random.default_rng(1).permutation(len(dataset)))
    assert sorted(tune.split_by_model(shuffled, 0.4)[1].names) == sorted(references.names)
    with pytest.raises(ConfigError):
        tune.split_by_model(dataset, 1.0)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One search of one tiny trial (2 volumes, batch 2, one step), then the same search resumed to two trials."""
    from tests.conftest import write_tree

    root = tmp_path_factory.mktemp("tune")
    data_dir = write_tree(str(root / "data"), categories={"chair": 0}, splits=("train",), models=4, rotations=2)
    base = Config.from_preset("book", data_dir=data_dir, cache_dir=str(root / "cache"), mixed_precision="float32")
    options = dict(
        output_dir=str(root / "out"),
        logdir=str(root / "logs"),
        trial_epochs=1,
        validation_fraction=0.5,
        max_training_samples=2,
        batch_sizes=(2,),
        baselines=(),
    )
    first = tune.run_search(base, max_evals=1, **options)
    with open(first.trials_path) as handle:
        first_file = json.load(handle)
    resumed = tune.run_search(base, max_evals=2, **options)
    return dict(base=base, options=options, first=first, first_file=first_file, resumed=resumed)


def test_tiny_trial_scores_finitely(search):
    first = search["first"]
    assert first.new_trials == 1 and len(first.records) == 1
    result = first.records[0]["result"]
    metrics = result["metrics"]
    assert math.isfinite(result["loss"])
    assert result["loss"] == pytest.approx(abs(metrics["1nna_iou"] - 0.5) + metrics["mmd_iou"] / 8), "2 references"
    assert metrics["sample_count"] == metrics["reference_count"] == 2
    assert 0.0 <= metrics["cov_iou"] <= 1.0 and 0.0 <= metrics["mmd_iou"] <= 1.0
    assert metrics["diverged"] is False
    trial_dir = os.path.join(search["options"]["output_dir"], "trials", "trial_0000")
    assert {"generator_weights.h5", "config.json"} <= set(os.listdir(trial_dir))
    trial_config = Config.load(trial_dir)
    assert trial_config.max_steps == 1 and trial_config.batch_size == 2


def test_resume_runs_only_the_missing_trial(search):
    resumed, first_file = search["resumed"], search["first_file"]
    assert resumed.new_trials == 1
    with open(resumed.trials_path) as handle:
        contents = json.load(handle)
    assert [record["tid"] for record in contents["trials"]] == [0, 1]
    assert contents["trials"][0] == first_file["trials"][0], "the earlier trial is kept, not rerun"
    assert contents["trials"][1]["vals"] != contents["trials"][0]["vals"]
    assert resumed.best["tid"] in (0, 1)
    # Asking for no more than is done runs nothing.
    again = tune.run_search(search["base"], max_evals=2, **search["options"])
    assert again.new_trials == 0 and again.records == resumed.records


def test_resume_refuses_other_settings_and_malformed_files(search, tmp_path):
    options = dict(search["options"], validation_fraction=0.25)
    with pytest.raises(ConfigError, match="validation_fraction"):
        tune.run_search(search["base"], max_evals=3, **options)
    broken = tmp_path / "trials.json"
    broken.write_text('{"format": "threedgan-tune-trials", "version": 1, "trials": [{"tid": 5}]}')
    with pytest.raises(ConfigError, match="malformed"):
        tune.read_trials_file(str(broken))
    broken.write_text("not json")
    with pytest.raises(ConfigError, match="cannot read"):
        tune.read_trials_file(str(broken))


def test_baselines_are_scored_first_as_finished_trials(tmp_path, monkeypatch):
    """The presets are trained with their own values, recorded as trials, and TPE carries on after them."""
    from tests.conftest import write_tree

    trained = []

    def fake_trial(config, training, references, evaluation_seed=None):
        trained.append(config)
        loss = 0.5 - 0.1 * len(trained)
        return {"status": "ok", "loss": loss, "metrics": {"1nna_iou": loss + 0.5, "cov_iou": 0.1, "mmd_iou": 0.5}}

    monkeypatch.setattr(tune, "run_trial", fake_trial)
    data_dir = write_tree(str(tmp_path / "data"), categories={"chair": 0}, splits=("train",), models=20, rotations=6)
    base = Config.from_preset("better", data_dir=data_dir, cache_dir=str(tmp_path / "cache"), mixed_precision="float32")
    options = dict(
        output_dir=str(tmp_path / "out"),
        logdir=str(tmp_path / "logs"),
        trial_epochs=1,
        validation_fraction=0.1,
        batch_sizes=(32, 100),
        baselines=("book", "paper"),
        startup_trials=1,
    )
    result = tune.run_search(base, max_evals=3, **options)
    assert [record["result"]["origin"] for record in result.records] == ["book", "paper", "search"]
    book, paper, searched = trained
    for config, preset in ((book, "book"), (paper, "paper")):
        for name, value in tune.preset_params(preset).items():
            assert getattr(config, name) == value, (preset, name)
    assert book.discriminator_beta_1 == 0.9 and paper.batch_size == 100 and paper.discriminator_accuracy_threshold == 0.8
    assert result.best["tid"] == 2 and result.best["result"]["origin"] == "search"
    with open(result.trials_path) as handle:
        assert [record["result"]["origin"] for record in json.load(handle)["trials"]] == ["book", "paper", "search"]
    # Resuming does not score the baselines again.
    again = tune.run_search(base, max_evals=4, **options)
    assert len(trained) == 4 and [record["result"]["origin"] for record in again.records][-1] == "search"


def test_best_config_loads_in_train(search):
    resumed = search["resumed"]
    path = resumed.best_config_path
    assert os.path.basename(path) == "best_config.json"
    loaded = Config.load(path)
    assert loaded == resumed.best_config
    for name, value in resumed.best["result"]["params"].items():
        assert getattr(loaded, name) == value
    assert loaded.epochs == search["base"].epochs and loaded.max_steps is None, "the trial budget is not the recipe"
    assert loaded.output_dir == search["base"].output_dir
    from_cli = config_from_train_arguments(train_parser().parse_args(["--config", path]))
    assert from_cli == loaded


def test_trials_are_in_tensorboard_hparams(search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    logdir = search["options"]["logdir"]
    experiment_events = EventAccumulator(logdir)
    experiment_events.Reload()
    content = experiment_events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    assert {info.name for info in experiment.hparam_infos} >= set(tune.search_space())
    assert {info.name.tag for info in experiment.metric_infos} >= {"score/loss", "score/1nna_iou"}

    for record in search["resumed"].records:
        events = EventAccumulator(os.path.join(logdir, tune.trial_name(record["tid"])))
        events.Reload()
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
        session = metadata.parse_session_start_info_plugin_data(content)
        params = record["result"]["params"]
        assert session.hparams["batch_size"].number_value == params["batch_size"]
        assert session.hparams["generator_learning_rate"].number_value == pytest.approx(params["generator_learning_rate"])
        assert session.hparams["trial_origin"].string_value == "search"
        assert events.Scalars("score/loss")[-1].value == pytest.approx(record["result"]["loss"])
        assert [event.step for event in events.Scalars("step/g_loss")] == [1], "the trial's training curves share its run"


def test_script_reports_bad_input_in_one_line(tmp_path):
    missing = str(tmp_path / "nowhere")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", missing, "--max-evals", "1", "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: data path not found: {missing}"
    assert tune.tune_main(["--max-evals", "1", "--validation-fraction", "1.5", "--output-dir", str(tmp_path / "o")]) == 2
