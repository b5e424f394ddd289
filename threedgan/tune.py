"""Hyper-parameter search: Hyperopt's TPE over the training recipe, each trial scored by 1-NNA (IoU) on held-out shapes.

The chapter closes its training part with hyper-parameter optimisation and names Hyperopt. Here every trial is a short
training run (`trial_epochs` passes over the training part) followed by the `evaluate` measure: as many generated
volumes as the validation slice holds, compared with it by the 1-nearest-neighbour accuracy under the IoU distance.
The loss is `|1-NNA − 0.5|` (0.5 is ideal), with the minimum matching distance breaking ties (see `run_trial`).

What is searched is only what `Config` holds (see `search_space`): the two Adam learning rates and β1s, the batch size,
the paper's D-update threshold (or none) and the latent standard deviation. The chapter's list also names activations,
optimizers and the number of layers, but its networks are fixed by its table (ReLU in G, LeakyReLU in D, five 3-D
(de)convolutions each, Adam) and `threedgan.models` builds exactly those; searching them would need new `Config`
fields and would no longer be the chapter's 3D-GAN.

Validation never touches the test split: the train split is cut by *model*, so the 12 rotations of one model are all
on the same side (`split_by_model`). The references are one rotation per held-out model, so that they are drawn from
the data distribution like the samples are: keeping all 12 would give every reference 11 near twins and push 1-NNA
above 0.5 even for a perfect generator.

Outputs, under `output_dir`:

- `trials.json`: every finished trial (its Hyperopt values, decoded parameters, loss and metrics). A later run with the
  same settings reads it, rebuilds Hyperopt's `Trials` from it and continues the search; it is plain JSON rather than
  Hyperopt's usual pickle because loading a file must never run code from it.
- `best_config.json`: the best trial's parameters on top of the starting config, a complete `Config` for
  `scripts/train.py --config best_config.json`.
- `trials/trial_NNNN/`: each trial's weights and `config.json`.

And under `logdir`, one TensorBoard run per trial (`trial_NNNN/`: training curves, the hparams plugin's session and the
`score/*` scalars) plus the hparams experiment description at the top, for TensorBoard's HParams tab.

Example:

    base = Config.from_preset("book", categories=["chair"], data_dir="3DShapeNetsCode.zip")
    result = run_search(base, max_evals=20, output_dir="tune/chair")
    print(result.best["loss"], result.best_config_path)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from hyperopt import STATUS_OK, Trials, fmin, hp, space_eval, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW

from threedgan.config import DEFAULT_PRESET, PRESETS, Config
from threedgan.data import VoxelDataset, load_config_dataset
from threedgan.errors import ConfigError, DataError, TrainingError

logger = logging.getLogger(__name__)

TRIALS_FILENAME = "trials.json"
BEST_CONFIG_FILENAME = "best_config.json"
TRIALS_FORMAT = "threedgan-tune-trials"
TRIALS_FORMAT_VERSION = 1
MAX_TRIALS_FILE_BYTES = 64 << 20
SCORE_METRICS = ("loss", "1nna_iou", "cov_iou", "mmd_iou")


# ------------------------------------------------------------------------------------------------------------- space


# The declared space's continuous part: `Config` field → (distribution, low, high). The chapter's and the paper's
# values lie inside every range, so both presets are points of the space (see `values_from_params`).
CONTINUOUS_SPACE = {
    "generator_learning_rate": ("loguniform", 1e-5, 1e-2),
    "discriminator_learning_rate": ("loguniform", 1e-6, 1e-2),
    "generator_beta_1": ("uniform", 0.1, 0.95),
    "discriminator_beta_1": ("uniform", 0.1, 0.95),
    "discriminator_accuracy_threshold": ("uniform", 0.5, 0.95),
    "z_stddev": ("loguniform", 0.1, 1.0),
}
DEFAULT_BATCH_SIZES = (16, 32, 64, 100)

# The labels Hyperopt records for `search_space`; the choice between "always update D" and a threshold has its own.
SPACE_LABELS = tuple(CONTINUOUS_SPACE) + ("batch_size", "discriminator_update")


def _continuous(name: str):
    distribution, low, high = CONTINUOUS_SPACE[name]
    if distribution == "loguniform":
        return hp.loguniform(name, math.log(low), math.log(high))
    return hp.uniform(name, low, high)


def search_space(batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> dict:
    """The declared search space, keyed by `Config` field so that a sample is a set of `Config` overrides.

    - `generator_learning_rate`: log-uniform in [1e-5, 1e-2] (chapter and paper: 0.0025).
    - `discriminator_learning_rate`: log-uniform in [1e-6, 1e-2] (chapter and paper: 1e-5).
    - `generator_beta_1`, `discriminator_beta_1`: uniform in [0.1, 0.95] (chapter 0.5 and 0.9, paper 0.5 and 0.5).
    - `batch_size`: one of `batch_sizes` (chapter 32, paper 100).
    - `discriminator_accuracy_threshold`: `None` (always update D, the chapter) or uniform in [0.5, 0.95] (the
      paper's 0.8); Hyperopt labels the choice `discriminator_update` (0 = always, 1 = threshold).
    - `z_stddev`: log-uniform in [0.1, 1.0] (chapter 0.33).

    Activations, optimizer and layer count are not searched: the chapter's table fixes them (module docstring).

    Args:
        batch_sizes: the batch sizes to choose from; every one must fit the training part.

    Returns:
        A dict from `Config` field name to a Hyperopt expression.

    Raises:
        ConfigError: `batch_sizes` is empty or holds a value below 1.
    """
    space = {name: _continuous(name) for name in CONTINUOUS_SPACE if name != "discriminator_accuracy_threshold"}
    space["batch_size"] = hp.choice("batch_size", _batch_size_list(batch_sizes))
    space["discriminator_accuracy_threshold"] = hp.choice(
        "discriminator_update", [None, _continuous("discriminator_accuracy_threshold")]
    )
    return space


def _batch_size_list(batch_sizes) -> list:
    sizes = [int(size) for size in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"batch sizes to search must be at least 1, got {list(batch_sizes)}")
    return sizes


def params_from_values(values: dict, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> dict:
    """Decodes Hyperopt's raw values (choice indices, active labels only) into `Config` overrides.

    Args:
        values: label → value, as Hyperopt records a trial (`batch_size` and `discriminator_update` are indices).
        batch_sizes: the space's batch sizes.

    Returns:
        A dict of `Config` field → plain Python value (`int`, `float` or `None`).
    """
    return _python_params(space_eval(search_space(batch_sizes), values))


def _python_params(params: dict) -> dict:
    # Hyperopt hands back NumPy scalars, which JSON cannot write and `Config` should not hold.
    return {
        name: (None if value is None else int(value) if name == "batch_size" else float(value))
        for name, value in params.items()
    }


def values_from_params(params: dict, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> Optional[dict]:
    """The inverse of `params_from_values`: Hyperopt's raw values for a point given as `Config` fields.

    Used to enter the `book` and `paper` presets as trials of the search.

    Args:
        params: the searched `Config` fields and their values.
        batch_sizes: the space's batch sizes.

    Returns:
        label → value for the active labels, or `None` when the point is outside the space (its batch size is not
        one of `batch_sizes` or a value is out of range).
    """
    batch_sizes = _batch_size_list(batch_sizes)
    if params["batch_size"] not in batch_sizes:
        return None
    values = {"batch_size": batch_sizes.index(params["batch_size"])}
    threshold = params["discriminator_accuracy_threshold"]
    values["discriminator_update"] = 0 if threshold is None else 1
    for name, (_, low, high) in CONTINUOUS_SPACE.items():
        value = params.get(name)
        if value is None:
            continue
        if not low <= value <= high:
            return None
        values[name] = float(value)
    return values


def preset_params(preset: str, base: Optional[Config] = None) -> dict:
    """The searched fields as a preset sets them (fields a preset leaves alone come from `base`, else defaults)."""
    base = base or Config()
    config = base.replace(**PRESETS[preset])
    return {name: getattr(config, name) for name in search_space()}


# ------------------------------------------------------------------------------------------------------------- data


def model_name(file_name: str) -> str:
    """The model a 3DShapeNets file belongs to: `chair_000000182_10.mat` → `chair_000000182`."""
    stem = os.path.splitext(os.path.basename(str(file_name)))[0]
    return re.sub(r"_\d+$", "", stem)


def _hash_order(text: str) -> str:
    # A content hash, not Python's salted hash(): the same names split the same way on every machine and run.
    return hashlib.sha256(text.encode("utf8")).hexdigest()


def split_by_model(dataset: VoxelDataset, validation_fraction: float):
    """Cuts a train split into a training part and a validation slice, by model.

    In each category, the models are ordered by a hash of their names and the first `validation_fraction` of them
    (at least one) are held out, with all their rotations, so no rotation of a held-out model is trained on. The
    split depends only on the file names: it is the same on every run and for any order of the files.

    Args:
        dataset: volumes of the train split.
        validation_fraction: share of each category's models to hold out, in (0, 1).

    Returns:
        `(training, references)`: the training part (every rotation of the other models) and the references (one
        rotation per held-out model, picked by the same hash, so the references are independent draws like samples).

    Raises:
        ConfigError: `validation_fraction` is outside (0, 1).
        DataError: a category has fewer than two models, so nothing would be left to train on or to validate with.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    training_indices, reference_indices = [], []
    for label in np.unique(dataset.labels):
        indices = np.flatnonzero(dataset.labels == label)
        by_model = {}
        for index in indices:
            by_model.setdefault(model_name(dataset.names[index]), []).append(int(index))
        category = dataset.category_names[label] if label < len(dataset.category_names) else str(label)
        if len(by_model) < 2:
            raise DataError(f"category {category!r} has {len(by_model)} model(s); holding some out needs at least 2")
        models = sorted(by_model, key=lambda name: _hash_order(f"{category}/{name}"))
        held_out = min(len(models) - 1, max(1, round(validation_fraction * len(models))))
        for name in models[:held_out]:
            files = sorted(by_model[name], key=lambda index: _hash_order(str(dataset.names[index])))
            reference_indices.append(files[0])
        for name in models[held_out:]:
            training_indices += by_model[name]
    return dataset.subset(np.sort(training_indices)), dataset.subset(np.sort(reference_indices))


def _evenly_spaced(dataset: VoxelDataset, count: Optional[int]) -> VoxelDataset:
    if count is None or count >= len(dataset):
        return dataset
    # Evenly spaced like `load_dataset`'s max_samples, so a small budget still spans models and rotations.
    return dataset.subset(np.linspace(0, len(dataset) - 1, count).round().astype(int))


# ------------------------------------------------------------------------------------------------------------ trials


def trial_name(trial_id: int) -> str:
    return f"trial_{trial_id:04d}"


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def run_trial(
    config: Config,
    training: VoxelDataset,
    references: VoxelDataset,
    evaluation_seed: Optional[int] = None,
) -> dict:
    """Trains one config on the training part, then scores its samples against the validation references.

    The score is `loss = |1-NNA(IoU) − 0.5| + MMD(IoU) / (4 n)`, lower is better, for `n` references and as many
    samples:

    - `|1-NNA − 0.5|`: 0.5 is 1-NNA's ideal, and above it the samples are told apart from the references. Below 0.5
      would mean samples closer to held-out shapes than those are to each other, which on held-out references is
      chance rather than quality, so both sides count as distance from the ideal.
    - `MMD / (4 n)` only breaks ties: 1-NNA moves in steps of `1 / (2 n)` and MMD is at most 1, so a trial with a
      1-NNA nearer 0.5 always wins, but among short trials whose samples are all told apart (1-NNA = 1) the one whose
      samples come closer to the references still ranks first, and TPE gets a signal to follow.

    A run whose loss becomes non-finite scores 1.0, worse than any scored trial, so the search learns to avoid that
    region.

    Args:
        config: the trial's complete config (its `epochs` and `max_steps` are the trial's budget, its `output_dir`,
            `logdir` and `run_name` where the trial writes).
        training: the volumes to train on.
        references: the validation references; as many samples are generated.
        evaluation_seed: seeds the evaluation latents; `None` uses `config.seed`. The same seed gives every trial the
            same standard-normal draws, scaled by its own `z_stddev`.

    Returns:
        Hyperopt's result dict: `status`, `loss` and `metrics` (`1nna_iou`, `cov_iou`, `mmd_iou`, occupancies, the
        last epoch's training metrics, `diverged`, timings; non-finite values as `None`).

    Raises:
        ConfigError: the batch size is larger than the training part.
    """
    import keras

    from threedgan.latent import sample_latents
    from threedgan.metrics import evaluate_sets
    from threedgan.models import generate_volumes
    from threedgan.train import Trainer

    # Each trial builds new networks; without this, every earlier trial's graphs stay in memory.
    keras.backend.clear_session()
    start = time.perf_counter()
    # The trial's hparams session is tune's own (write_trial_summary): origin and scores, not the whole config.
    trainer = Trainer(config, dataset=training, hparams=False)
    try:
        training_metrics = trainer.train()
    except TrainingError as error:
        logger.warning("%s diverged: %s", config.run_name, error)
        return {"status": STATUS_OK, "loss": 1.0, "metrics": {"diverged": True, "error": str(error).splitlines()[0]}}
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    trainer.gan.step.sync_variables()
    seed = config.seed if evaluation_seed is None else evaluation_seed
    # A stream of its own: the trainer draws its latents from `seed` and its image latents from `seed + 1`.
    latents = sample_latents(len(references), config.z_size, config.z_stddev, seed=np.random.default_rng([seed, 2]))
    samples = generate_volumes(trainer.gan.generator, latents, config.batch_size)
    scores = evaluate_sets(samples, references.volumes64(), distances=("iou",))
    one_nna = scores["1nna_iou"]
    metrics = {name: _finite_or_none(value) for name, value in scores.items()}
    metrics.update({name: _finite_or_none(value) for name, value in training_metrics.items()})
    metrics.update(
        diverged=False,
        train_seconds=round(train_seconds, 3),
        evaluate_seconds=round(time.perf_counter() - start, 3),
    )
    loss = abs(one_nna - 0.5) + scores["mmd_iou"] / (4 * len(references))
    return {"status": STATUS_OK, "loss": float(loss), "metrics": metrics}


# -------------------------------------------------------------------------------------------------- trials file


def _trial_document(record: dict) -> dict:
    """A Hyperopt trial document (as `Trials` keeps them) rebuilt from one JSON record."""
    trial_id = record["tid"]
    values = record["vals"]
    return {
        "state": JOB_STATE_DONE if record["result"] is not None else JOB_STATE_NEW,
        "tid": trial_id,
        "spec": None,
        "result": record["result"] if record["result"] is not None else {"status": "new"},
        "misc": {
            "tid": trial_id,
            "cmd": ("domain_attachment", "FMinIter_Domain"),
            "workdir": None,
            # Hyperopt lists every label, with an empty list where a choice left it inactive.
            "idxs": {label: [trial_id] if label in values else [] for label in SPACE_LABELS},
            "vals": {label: [values[label]] if label in values else [] for label in SPACE_LABELS},
        },
        "exp_key": None,
        "owner": None,
        "version": 0,
        "book_time": _parse_time(record.get("book_time")),
        "refresh_time": _parse_time(record.get("refresh_time")),
    }


def _record(document: dict) -> dict:
    """One JSON record of a finished Hyperopt trial document."""
    values = {
        label: (int(value[0]) if label in ("batch_size", "discriminator_update") else float(value[0]))
        for label, value in document["misc"]["vals"].items()
        if value
    }
    return {
        "tid": int(document["tid"]),
        "vals": values,
        "result": _plain(document["result"]),
        "book_time": _format_time(document.get("book_time")),
        "refresh_time": _format_time(document.get("refresh_time")),
    }


def _plain(value):
    """A copy that `json.dump(allow_nan=False)` accepts (NumPy scalars to Python, non-finite floats to None)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(value)
    return value


def _format_time(value):
    return value.isoformat() if isinstance(value, datetime.datetime) else None


def _timestamp(text):
    # Hyperopt stamps trials with naive UTC times.
    moment = _parse_time(text)
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp() if moment else None


def _parse_time(text):
    try:
        return datetime.datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None


def read_trials_file(path: str) -> dict:
    """Reads and checks a trials file.

    Args:
        path: the `trials.json` of an earlier run.

    Returns:
        The file's contents: `format`, `version`, `settings` (what the trials were scored under) and `trials` (one
        record per finished trial, ordered by trial id: `tid`, `vals`, `result`, `book_time`, `refresh_time`).

    Raises:
        ConfigError: the file is not JSON or not a trials file, or its records are malformed.
    """
    from threedgan.safe_io import read_regular_file

    try:
        # A regular file (never a FIFO or a device) of at most 64 MiB: about 100,000 trials.
        contents = json.loads(read_regular_file(path, MAX_TRIALS_FILE_BYTES, ConfigError, what="trials file").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ConfigError(f"cannot read trials file {path}: {error}") from None
    if not isinstance(contents, dict) or contents.get("format") != TRIALS_FORMAT:
        raise ConfigError(f"{path} is not a threedgan trials file")
    if contents.get("version") != TRIALS_FORMAT_VERSION:
        raise ConfigError(f"{path} has trials format version {contents.get('version')!r}; this code reads {TRIALS_FORMAT_VERSION}")
    records = contents.get("trials")
    if not isinstance(records, list):
        raise ConfigError(f"{path}: 'trials' must be a list")
    for position, record in enumerate(records):
        valid = (
            isinstance(record, dict)
            and record.get("tid") == position
            and isinstance(record.get("vals"), dict)
            and set(record["vals"]) <= set(SPACE_LABELS)
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in record["vals"].values())
            and isinstance(record.get("result"), dict)
            and isinstance(record["result"].get("loss"), (int, float))
            and record["result"].get("status") == STATUS_OK
            and isinstance(record["result"].get("params"), dict)
            and set(record["result"]["params"]) == set(search_space())
            and isinstance(record["result"].get("metrics"), dict)
        )
        if not valid:
            raise ConfigError(f"{path}: trial record {position} is malformed (trial ids must run 0, 1, 2, ...)")
        problem = _record_problem(record)
        if problem:
            raise ConfigError(f"{path}: trial record {position}: {problem}")
    return contents


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_problem(record: dict) -> Optional[str]:
    """What is wrong with a trial record's numbers and types beyond its layout, or `None`.

    Hyperopt's values and the loss must be finite numbers (TPE would model NaN as a value), the parameters must be
    what `Config` accepts (they go through its typed validation) and the metrics numbers, booleans or `null`.
    """
    for label, value in record["vals"].items():
        if not math.isfinite(value):
            return f"value {label} = {value!r} is not a finite number"
        if label in ("batch_size", "discriminator_update") and not isinstance(value, int):
            return f"value {label} = {value!r} must be an integer choice index"
    result = record["result"]
    if not _is_finite_number(result["loss"]):
        return f"loss {result['loss']!r} is not a finite number"
    params = result["params"]
    try:
        Config(**params)
    except ConfigError as error:
        return f"its parameters are invalid ({error})"
    except TypeError as error:
        return f"its parameters are invalid ({error})"
    for name, value in result["metrics"].items():
        if name == "error" and isinstance(value, str):
            continue
        if not (value is None or isinstance(value, bool) or _is_finite_number(value)):
            return f"metric {name} = {value!r} is not a finite number, a boolean or null"
    origin = result.get("origin", "search")
    if not isinstance(origin, str) or origin not in ("search",) + tuple(PRESETS):
        return f"origin {origin!r} is not 'search' or a preset"
    for name in ("book_time", "refresh_time"):
        if record.get(name) is not None and not isinstance(record.get(name), str):
            return f"{name} {record.get(name)!r} is not a time"
    return None


def trials_from_records(records: Sequence[dict]) -> Trials:
    """Rebuilds Hyperopt's `Trials` from JSON records, so that a search continues with the earlier results counted."""
    trials = Trials()
    if records:
        trials.insert_trial_docs([_trial_document(record) for record in records])
        trials.refresh()
    return trials


def _write_json(path: str, contents) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(contents, handle, indent=2, sort_keys=True, allow_nan=False)
        handle.write("\n")
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------- TensorBoard


def _hparams_of(params: dict, origin: str) -> dict:
    """The trial's values as the hparams plugin takes them (numbers and strings only)."""
    values = dict(params)
    # Accuracy never exceeds 1, so a threshold of 1.0 updates D every time, exactly what `None` means.
    if values["discriminator_accuracy_threshold"] is None:
        values["discriminator_accuracy_threshold"] = 1.0
    values["trial_origin"] = origin
    return values


def _write_summaries(logdir: str, summaries) -> None:
    """Writes `(summary proto, step)` pairs into a new event file in `logdir`.

    The hparams plugin's `summary_v2.hparams_pb`/`hparams_config_pb` return `Summary` protos without TensorFlow; our
    `SummaryWriter` has no public method for a ready-made proto, so they go through TensorBoard's own event file
    writer, as `SummaryWriter` does.
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(logdir, exist_ok=True)
    writer = EventFileWriter(logdir)
    try:
        for summary, step in summaries:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    finally:
        writer.close()


def write_experiment_summary(logdir: str, batch_sizes: Sequence[int]) -> None:
    """Describes the search to TensorBoard's HParams tab: the hyper-parameters' domains and the score metrics."""
    from tensorboard.plugins.hparams import summary_v2 as hparams

    intervals = {name: hparams.RealInterval(float(low), float(high)) for name, (_, low, high) in CONTINUOUS_SPACE.items()}
    parameters = [
        hparams.HParam(name, intervals[name])
        for name in ("generator_learning_rate", "discriminator_learning_rate", "generator_beta_1", "discriminator_beta_1")
    ]
    parameters += [
        hparams.HParam("batch_size", hparams.Discrete(_batch_size_list(batch_sizes))),
        hparams.HParam(
            "discriminator_accuracy_threshold",
            hparams.RealInterval(0.5, 1.0),
            description="update D only when its last accuracy was at most this; 1.0 = always (the chapter)",
        ),
        hparams.HParam("z_stddev", intervals["z_stddev"]),
        hparams.HParam("trial_origin", hparams.Discrete(["search", *PRESETS])),
    ]
    metrics = [
        hparams.Metric("score/loss", description="|1-NNA(IoU) - 0.5| + MMD(IoU) / 4n (ties only) on the validation slice, lower is better"),
        hparams.Metric("score/1nna_iou", description="1-NNA with the IoU distance, 0.5 is ideal"),
        hparams.Metric("score/cov_iou", description="coverage, higher is better"),
        hparams.Metric("score/mmd_iou", description="minimum matching distance, lower is better"),
    ]
    _write_summaries(logdir, [(hparams.hparams_config_pb(parameters, metrics), 0)])


def write_trial_summary(logdir: str, record: dict) -> None:
    """Logs one finished trial to its TensorBoard run: its hparams session and the `score/*` scalars."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams

    result = record["result"]
    name = trial_name(record["tid"])
    session = hparams.hparams_pb(
        _hparams_of(result["params"], result.get("origin", "search")),
        trial_id=name,
        start_time_secs=_timestamp(record.get("book_time")),
    )
    values = {"loss": result["loss"], **{key: result["metrics"].get(key) for key in SCORE_METRICS[1:]}}
    scores = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag=f"score/{key}", simple_value=float(value))
            for key, value in values.items()
            if value is not None
        ]
    )
    _write_summaries(os.path.join(logdir, name), [(session, 0), (scores, 0)])


# --------------------------------------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    """What `run_search` leaves.

    Attributes:
        records: every finished trial, in trial-id order (as in the trials file).
        best: the record with the lowest loss (the earliest among equals).
        best_config: the starting config with the best trial's parameters.
        trials_path, best_config_path: the files written.
        new_trials: how many trials this call ran (the others came from the trials file).
    """

    records: list
    best: dict
    best_config: Config
    trials_path: str
    best_config_path: str
    new_trials: int


def _settings(base: Config, batch_sizes, validation_fraction, trial_epochs, max_training_samples, seed) -> dict:
    """What a trial's score depends on besides its parameters; a resumed search must not mix scores across these."""
    return {
        "categories": list(base.categories),
        "rotations": base.rotations,
        "obj_ratio": base.obj_ratio,
        "z_size": base.z_size,
        "real_label": base.real_label,
        "batch_sizes": _batch_size_list(batch_sizes),
        "validation_fraction": validation_fraction,
        "trial_epochs": float(trial_epochs),
        "max_training_samples": max_training_samples,
        "seed": seed,
    }


def _best(records: Sequence[dict]) -> dict:
    return min(records, key=lambda record: (record["result"]["loss"], record["tid"]))


def run_search(
    base_config: Config,
    max_evals: int,
    output_dir: str = "tune",
    logdir: Optional[str] = None,
    trial_epochs: float = 2.0,
    validation_fraction: float = 0.1,
    max_training_samples: Optional[int] = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    baselines: Sequence[str] = (DEFAULT_PRESET, "book"),
    startup_trials: int = 10,
    dataset: Optional[VoxelDataset] = None,
) -> SearchResult:
    """Runs (or continues) a TPE search until `max_evals` trials have finished.

    A `trials.json` already in `output_dir` is resumed: its trials count toward `max_evals` and inform TPE, so the
    search goes on as if it had never stopped (each trial's suggestion is seeded by `base_config.seed` and its trial
    id). The trials file and `best_config.json` are rewritten after every trial, so an interrupted search loses at
    most the trial in progress.

    Args:
        base_config: the starting point: data fields (`data_dir`, `categories`, `rotations`, `obj_ratio`,
            `cache_dir`), the fields not searched (`z_size`, `seed`, `real_label`, `mixed_precision`, the full run's
            `epochs`) and the outputs of the final training run. Its `split` and `max_samples` are ignored: the search
            always uses the whole train split.
        max_evals: total number of trials, earlier ones included.
        output_dir: where `trials.json`, `best_config.json` and the trials' weights go.
        logdir: TensorBoard root for the trials; `None` uses `<output_dir>/logs`.
        trial_epochs: each trial's budget, in passes over the training part (fractions allowed), so every trial sees
            the same number of volumes whatever its batch size.
        validation_fraction: share of each category's models held out for scoring (see `split_by_model`).
        max_training_samples: train each trial on at most this many volumes (evenly spaced over the training part);
            `None` uses the whole training part.
        batch_sizes: the batch sizes searched (see `search_space`).
        baselines: presets entered as the first trials, scored under the same budget, to compare the search with.
            A preset whose values lie outside the space (e.g. its batch size is not in `batch_sizes`) is skipped.
        startup_trials: trials drawn at random before TPE starts modelling (Hyperopt's default is 20); baselines count.
        dataset: the train split, already loaded; `None` loads it as `base_config` says.

    Returns:
        A `SearchResult`.

    Raises:
        ConfigError: invalid arguments; a trials file that is malformed or was scored under other settings; batch
            sizes larger than the training part.
        DataError: the data cannot be read, or a category has fewer than two models.
    """
    if max_evals < 1:
        raise ConfigError(f"max evals must be at least 1, got {max_evals}")
    if not trial_epochs > 0:
        raise ConfigError(f"trial epochs must be positive, got {trial_epochs}")
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    if max_training_samples is not None and max_training_samples < 1:
        raise ConfigError(f"max training samples must be at least 1, got {max_training_samples}")
    unknown = [name for name in baselines if name not in PRESETS]
    if unknown:
        raise ConfigError(f"unknown baseline preset {unknown[0]!r}; choose from: {', '.join(PRESETS)}")
    batch_sizes = _batch_size_list(batch_sizes)
    logdir = logdir or os.path.join(output_dir, "logs")
    settings = _settings(base_config, batch_sizes, validation_fraction, trial_epochs, max_training_samples, base_config.seed)

    os.makedirs(output_dir, exist_ok=True)
    trials_path = os.path.join(output_dir, TRIALS_FILENAME)
    records = []
    if os.path.exists(trials_path):
        contents = read_trials_file(trials_path)
        for name, value in settings.items():
            if contents.get("settings", {}).get(name) != value:
                raise ConfigError(
                    f"{trials_path} was scored with {name} = {contents.get('settings', {}).get(name)!r}, not {value!r}; "
                    "use another --output-dir or the same settings"
                )
        records = contents["trials"]
        logger.info("resuming %s: %d trials done", trials_path, len(records))

    if dataset is None:
        dataset = load_config_dataset(base_config, split="train", max_samples=None)
    training, references = split_by_model(dataset, validation_fraction)
    training = _evenly_spaced(training, max_training_samples)
    if len(training) < max(batch_sizes):
        raise ConfigError(
            f"the training part has {len(training)} volumes, fewer than the largest batch size searched "
            f"({max(batch_sizes)}); search smaller batch sizes or use more data"
        )
    logger.info("training part: %d volumes; validation: %d held-out models", len(training), len(references))

    space = search_space(batch_sizes)
    trials = trials_from_records(records)
    write_experiment_summary(logdir, batch_sizes)
    done_origins = {record["result"].get("origin") for record in records}
    pending_baselines = []
    for name in baselines:
        values = values_from_params(preset_params(name, base_config), batch_sizes)
        if values is None:
            logger.warning("baseline %r lies outside the search space (batch sizes %s); skipped", name, batch_sizes)
        elif name not in done_origins:
            pending_baselines.append((name, values))

    new_trials = 0
    while len(trials) < max_evals:
        trial_id = len(trials)
        origin, baseline_values = "search", None
        if pending_baselines:
            origin, baseline_values = pending_baselines.pop(0)

        def objective(params, trial_id=trial_id, origin=origin):
            params = _python_params(params)
            name = trial_name(trial_id)
            # The budget is a number of volumes seen, the same for every batch size; `max_steps` allows fractions of
            # an epoch, which a whole category on a GPU needs.
            steps = max(1, round(trial_epochs * (len(training) // params["batch_size"])))
            config = base_config.replace(
                **params,
                split="train",
                max_samples=None,
                epochs=math.ceil(trial_epochs),
                max_steps=steps,
                time_budget_minutes=None,
                output_dir=os.path.join(output_dir, "trials", name),
                logdir=logdir,
                run_name=name,
                # Trials need their score, not checkpoints or image series; one image still shows at the end.
                checkpoint_every_steps=0,
                checkpoint_every_minutes=0,
                image_every_steps=0,
                images_per_log=1,
                mesh_every_steps=0,
                metrics_every_steps=0,
                set_metrics_every_steps=0,
            )
            logger.info("%s (%s): %s", name, origin, params)
            result = run_trial(config, training, references, evaluation_seed=base_config.seed)
            return _plain(dict(result, params=params, origin=origin))

        if baseline_values is not None:
            # A preset is scored here and entered as a finished trial, which TPE then counts like its own. (A queued
            # document, as `points_to_evaluate` makes, is never evaluated by `fmin` on a `Trials` it is handed.)
            booked = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            result = objective(params_from_values(baseline_values, batch_sizes))
            finished = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            records = records + [
                {
                    "tid": trial_id,
                    "vals": baseline_values,
                    "result": result,
                    "book_time": _format_time(booked),
                    "refresh_time": _format_time(finished),
                }
            ]
            trials = trials_from_records(records)
        else:
            fmin(
                objective,
                space,
                algo=functools.partial(tpe.suggest, n_startup_jobs=startup_trials),
                max_evals=trial_id + 1,
                trials=trials,
                # Seeded by trial id: a resumed search suggests what an uninterrupted one would have.
                rstate=np.random.default_rng([base_config.seed, trial_id]),
                show_progressbar=False,
                return_argmin=False,
            )
            records = [_record(document) for document in sorted(trials.trials, key=lambda document: document["tid"])]
        new_trials += 1
        write_trial_summary(logdir, records[-1])
        _write_json(
            trials_path,
            {"format": TRIALS_FORMAT, "version": TRIALS_FORMAT_VERSION, "settings": settings, "trials": records},
        )
        _write_best_config(base_config, records, output_dir)
        result = records[-1]["result"]
        logger.info(
            "%s: loss %.4f (1-NNA %s); best so far %s",
            trial_name(trial_id),
            result["loss"],
            result["metrics"].get("1nna_iou"),
            trial_name(_best(records)["tid"]),
        )

    best_config_path = _write_best_config(base_config, records, output_dir)
    best = _best(records)
    return SearchResult(
        records=records,
        best=best,
        best_config=best_config_from(base_config, best),
        trials_path=trials_path,
        best_config_path=best_config_path,
        new_trials=new_trials,
    )


def best_config_from(base_config: Config, record: dict) -> Config:
    """The starting config with a trial's parameters: the recipe for a full training run.

    The search's own budget (`trial_epochs`, `max_training_samples`, the trial's folders) is not part of it: `epochs`,
    `max_steps`, `max_samples`, `output_dir`, `logdir` and `run_name` keep the starting config's values.
    """
    return base_config.replace(**record["result"]["params"], split="train")


def _write_best_config(base_config: Config, records, output_dir: str) -> str:
    return best_config_from(base_config, _best(records)).save(output_dir, BEST_CONFIG_FILENAME)


# --------------------------------------------------------------------------------------------------- command line


def tune_parser() -> argparse.ArgumentParser:
    from threedgan.cli import MAX_SEED, ArgumentParser, _positive_float, _positive_int, bounded_int

    parser = ArgumentParser(
        prog="threedgan-tune",
        description=(
            "Search the training recipe with Hyperopt (TPE). Each trial trains briefly and is scored by "
            "|1-NNA(IoU) - 0.5| on models held out of the train split (MMD breaks ties). Re-running with the same --output-dir "
            "resumes the search."
        ),
    )
    parser.add_argument("--category", nargs="+", dest="categories", metavar="NAME", default=["chair"], help="categories (default chair)")
    parser.add_argument("--data-dir", help="volumetric_data folder, a folder above it, or the zip (default $THREEDGAN_DATA, else download)")
    parser.add_argument("--max-evals", type=_positive_int, required=True, help="total trials, earlier ones included")
    parser.add_argument(
        "--trial-epochs", type=_positive_float, default=2.0, help="passes over the training part per trial, fractions allowed (default 2)"
    )
    parser.add_argument("--max-samples", type=_positive_int, help="train each trial on at most N volumes")
    parser.add_argument(
        "--validation-fraction", type=_positive_float, default=0.1, help="share of each category's models held out (default 0.1)"
    )
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=list(DEFAULT_BATCH_SIZES), help="batch sizes to search")
    parser.add_argument(
        "--baselines", nargs="*", choices=sorted(PRESETS), default=[DEFAULT_PRESET, "book"],
        help=f"presets scored first, under the same budget (default {DEFAULT_PRESET} book; give none to skip)",
    )
    parser.add_argument("--startup-trials", type=_positive_int, default=10, help="random trials before TPE models (default 10)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
        help=f"starting point for fields not searched (default {DEFAULT_PRESET})",
    )
    parser.add_argument("--rotations", choices=["all", "canonical"], default="all")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED - 1), default=0)
    parser.add_argument("--precision", dest="mixed_precision", choices=["auto", "bfloat16", "float32"], default="auto")
    parser.add_argument("--cache-dir", help="where parsed data is cached (default ~/.cache/threedgan)")
    parser.add_argument("--output-dir", help="trials.json, best_config.json, trial weights (default tune/<category>)")
    parser.add_argument("--logdir", help="TensorBoard root for the trials (default <output-dir>/logs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _tune_main(argv) -> int:
    arguments = tune_parser().parse_args(argv)
    # Hyperopt reports every TPE step at INFO; the trials' own lines say what matters.
    logging.getLogger("hyperopt").setLevel(logging.DEBUG if arguments.debug else logging.WARNING)
    base_config = Config.from_preset(
        arguments.preset,
        categories=arguments.categories,
        data_dir=arguments.data_dir,
        rotations=arguments.rotations,
        seed=arguments.seed,
        mixed_precision=arguments.mixed_precision,
        cache_dir=arguments.cache_dir,
    )
    output_dir = arguments.output_dir or os.path.join("tune", "-".join(arguments.categories))
    from threedgan.cli import check_output_folder

    # Before any data is read or a trial trained: folders that cannot be written fail now.
    check_output_folder(output_dir, "--output-dir")
    check_output_folder(arguments.logdir or os.path.join(output_dir, "logs"), "--logdir")
    try:
        result = run_search(
            base_config,
            max_evals=arguments.max_evals,
            output_dir=output_dir,
            logdir=arguments.logdir,
            trial_epochs=arguments.trial_epochs,
            validation_fraction=arguments.validation_fraction,
            max_training_samples=arguments.max_samples,
            batch_sizes=arguments.batch_sizes,
            baselines=arguments.baselines,
            startup_trials=arguments.startup_trials,
        )
    except OSError as error:
        if error.filename is None:
            # h5py and json writes report no path: name the folder the search writes into.
            raise OSError(error.errno, f"{error.strerror or error} (writing the search's outputs)", output_dir) from error
        raise
    print(format_results(result.records))
    print(f"best: {trial_name(result.best['tid'])}, loss {result.best['result']['loss']:.4f}")
    print(f"wrote {result.best_config_path}; train with: python scripts/train.py --config {result.best_config_path}")
    return 0


def format_results(records: Sequence[dict]) -> str:
    """A table of trials, best first: loss, 1-NNA, COV, MMD and the parameters."""
    lines = [f"{'trial':<11}{'origin':<8}{'loss':>7}{'1-NNA':>7}{'COV':>6}{'MMD':>7}  parameters"]
    for record in sorted(records, key=lambda record: (record["result"]["loss"], record["tid"])):
        result = record["result"]
        params = result["params"]
        threshold = params["discriminator_accuracy_threshold"]
        lines.append(
            f"{trial_name(record['tid']):<11}{result.get('origin', 'search'):<8}{result['loss']:>7.4f}"
            f"{_number(result['metrics'].get('1nna_iou'), 7, 3)}{_number(result['metrics'].get('cov_iou'), 6, 2)}"
            f"{_number(result['metrics'].get('mmd_iou'), 7, 3)}  "
            f"g_lr {params['generator_learning_rate']:.2e} d_lr {params['discriminator_learning_rate']:.2e} "
            f"g_b1 {params['generator_beta_1']:.2f} d_b1 {params['discriminator_beta_1']:.2f} "
            f"batch {params['batch_size']} d_threshold {'none' if threshold is None else f'{threshold:.2f}'} "
            f"z_std {params['z_stddev']:.2f}"
        )
    return "\n".join(lines)


def _number(value, width: int, digits: int) -> str:
    # Diverged trials have no scores.
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def tune_main(argv=None) -> int:
    """`scripts/tune.py`: parses arguments, runs the search, prints the trials best first and the best config's path."""
    from threedgan.cli import user_errors_to_exit_code

    return user_errors_to_exit_code(_tune_main)(argv)
