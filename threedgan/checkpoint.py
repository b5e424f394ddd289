"""Checkpoints: everything a run needs to continue exactly where it stopped, written so that no crash leaves a
damaged one behind.

One folder per checkpoint under `<output_dir>/checkpoints/`:

    ckpt-00000120/
        generator_weights.h5       every variable of G and D (trainable ones and BatchNorm statistics), in the
        discriminator_weights.h5   legacy HDF5 layout of `threedgan.weights`, so `generate --weights` reads them too;
                                   with a generator average (`ema_decay` > 0) generator_weights.h5 holds the average,
        generator_raw_weights.h5   and this file the trained G itself
        config.json                the run's config
        optimizers.h5              both Adam optimizers' variables (iteration count, learning rate, moments), in order
        epoch_order.npy            the current epoch's shuffled volume order (absent at an epoch boundary)
        state.json                 step, epoch, next batch of the epoch, the NumPy RNG state, D's last accuracy, the
                                   epoch's metric sums so far, and the size and SHA-256 of every other file

Writing: everything goes into a hidden `.tmp-ckpt-...` folder beside the others, is flushed to disk, and the folder
is renamed to its final name in one atomic step, so a checkpoint folder is either complete or absent, whenever the
process dies. Checkpoints beyond the newest `keep` are first renamed to a hidden name and then deleted, for the same
reason. Reading uses only `json`, h5py and `np.load(allow_pickle=False)`: no file can make the loader run code.
A checkpoint whose files do not match the sizes and hashes its `state.json` lists is damaged: it is skipped, with a
warning, in favour of the one before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import h5py
import keras
import numpy as np

from threedgan.config import CONFIG_FILENAME, Config
from threedgan.errors import ConfigError, TrainingError, WeightsError
from threedgan.safe_io import file_sha256, fsync_directory, fsync_file
from threedgan.weights import load_weights_h5, save_weights_h5

logger = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"
CHECKPOINT_PREFIX = "ckpt-"
STEP_DIGITS = 8
TEMPORARY_PREFIX = ".tmp-"
FORMAT_VERSION = 1

GENERATOR_FILENAME = "generator_weights.h5"
RAW_GENERATOR_FILENAME = "generator_raw_weights.h5"
DISCRIMINATOR_FILENAME = "discriminator_weights.h5"
OPTIMIZERS_FILENAME = "optimizers.h5"
EPOCH_ORDER_FILENAME = "epoch_order.npy"
STATE_FILENAME = "state.json"
# The only names a state.json may list: a manifest naming "../x" must not make the reader open files elsewhere.
CHECKSUMMED_FILENAMES = (
    GENERATOR_FILENAME, RAW_GENERATOR_FILENAME, DISCRIMINATOR_FILENAME, CONFIG_FILENAME, OPTIMIZERS_FILENAME,
    EPOCH_ORDER_FILENAME,
)
OPTIMIZER_GROUPS = ("generator_optimizer", "discriminator_optimizer")

# Fields that may change between the run that wrote a checkpoint and the run resuming from it: where things are
# read from and written to, how often, and how long to train. Everything else (networks, recipe, seed, which data)
# must match, or the resumed run would not be the same run.
FIELDS_FREE_ON_RESUME = (
    "data_dir",
    "cache_dir",
    "epochs",
    "max_steps",
    "time_budget_minutes",
    # Synchronised BatchNorm makes N devices train the one-device model, so a run may resume on more or fewer.
    "devices",
    # Speed settings: the same networks and weight files in every layout (tests/test_layouts.py).
    "data_format",
    "deconvolution",
    "discriminator_convolution",
    "output_dir",
    "logdir",
    "run_name",
    "image_every_steps",
    "images_per_log",
    "checkpoint_every_steps",
    "keep_checkpoints",
    # What is watched and how often (threedgan.monitor): not part of the training.
    "mesh_every_steps",
    "metrics_every_steps",
    "set_metrics_every_steps",
    "metrics_samples",
    "metrics_references",
    "checkpoint_every_minutes",
)

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class TrainingState:
    """Where a run stands between two steps: everything a checkpoint holds besides the variables.

    Attributes:
        step: steps done so far.
        epoch: epochs completed.
        batch_index: batches of the current epoch already done.
        epoch_order: the current epoch's order of volume indices, or `None` at an epoch boundary (the next epoch
            then draws its order from the RNG).
        epoch_totals: each metric summed over the current epoch's batches done so far (for the epoch means).
        epoch_metrics: the last completed epoch's mean metrics.
        rng_state: `numpy.random.Generator.bit_generator.state`; every batch order and latent is drawn from it.
        last_accuracy: D's accuracy on the previous step, which the paper's update rule reads.
        run_name: the TensorBoard run folder, so a resumed run continues the same charts.
        data_fingerprint: a hash of the training volumes (see `dataset_fingerprint`): resuming on other data is
            refused, since the saved order would pick other volumes.
        backend, precision: the Keras backend and compute dtype; another one continues, but not bit for bit.
    """

    step: int
    epoch: int
    batch_index: int
    epoch_order: Optional[np.ndarray]
    rng_state: dict
    last_accuracy: float
    run_name: str
    data_fingerprint: str
    backend: str
    precision: str
    epoch_totals: Dict[str, float] = field(default_factory=dict)
    epoch_metrics: Dict[str, float] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A checkpoint read from disk and checked, ready for `restore`.

    Attributes:
        path: its folder.
        config: the config of the run that wrote it.
        state: see `TrainingState`.
        optimizer_values: for each of `OPTIMIZER_GROUPS`, the (variable path, array) pairs in the optimizer's order.
    """

    path: str
    config: Config
    state: TrainingState
    optimizer_values: Dict[str, List[Tuple[str, np.ndarray]]]

    @property
    def step(self) -> int:
        return self.state.step


def dataset_fingerprint(dataset) -> str:
    """A SHA-256 over a `VoxelDataset`'s volumes, names and labels, in order."""
    digest = hashlib.sha256()
    for array in (dataset.packed, dataset.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\0".join(map(str, dataset.names)).encode("utf8"))
    return digest.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:0{STEP_DIGITS}d}"


def config_differences(saved: Config, current: Config) -> List[Tuple[str, object, object]]:
    """The fields outside `FIELDS_FREE_ON_RESUME` whose values differ, as (name, saved value, current value)."""
    saved_values, current_values = saved.to_dict(), current.to_dict()
    return [
        (name, saved_values[name], current_values[name])
        for name in saved_values
        if name not in FIELDS_FREE_ON_RESUME and saved_values[name] != current_values[name]
    ]


# ---------------------------------------------------------------------------------------------------------- writing


def write_checkpoint(directory: str, gan, state: TrainingState) -> str:
    """Writes one checkpoint folder atomically and returns its path.

    Args:
        directory: the checkpoints folder (created if needed).
        gan: a `threedgan.train.Gan`; its step's state is synced into the Keras variables first.
        state: where the run stands; `state.step` names the folder.

    Returns:
        The checkpoint's folder, `<directory>/ckpt-<step>`.

    Raises:
        TrainingError: a variable holds NaN or infinity; nothing is written, so the previous checkpoint stays the
            newest good one.
    """
    gan.step.sync_variables()
    _check_finite(gan, state.step)
    os.makedirs(directory, exist_ok=True)
    final_path = os.path.join(directory, checkpoint_name(state.step))
    temporary_path = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{checkpoint_name(state.step)}-", dir=directory)
    try:
        weight_files = _weight_files(gan)
        for model, name in weight_files:
            save_weights_h5(model, os.path.join(temporary_path, name))
        names = [name for _, name in weight_files] + [CONFIG_FILENAME, OPTIMIZERS_FILENAME]
        gan.config.save(temporary_path)
        _write_optimizers(os.path.join(temporary_path, OPTIMIZERS_FILENAME), gan)
        if state.epoch_order is not None:
            np.save(os.path.join(temporary_path, EPOCH_ORDER_FILENAME), np.asarray(state.epoch_order, np.int64))
            names.append(EPOCH_ORDER_FILENAME)
        files = {}
        for name in names:
            path = os.path.join(temporary_path, name)
            fsync_file(path)
            files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
        with open(os.path.join(temporary_path, STATE_FILENAME), "w") as handle:
            json.dump(_state_document(state, files), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        # mkdtemp makes the folder private (0700); a checkpoint gets the usual permissions under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o777 & ~umask)
        fsync_directory(temporary_path)
        replaced = None
        if os.path.exists(final_path):
            # The same step again (after resuming from an older checkpoint): move the old one out of the way first;
            # a crash between the two renames leaves only a hidden folder, which the next run deletes.
            replaced = _rename_to_hidden(final_path, directory)
        os.rename(temporary_path, final_path)
        fsync_directory(directory)
    except BaseException:
        shutil.rmtree(temporary_path, ignore_errors=True)
        raise
    if replaced:
        shutil.rmtree(replaced, ignore_errors=True)
    return final_path


def _weight_files(gan) -> List[Tuple[keras.Model, str]]:
    """Which network goes into which weights file: the averaged G, when there is one, takes the name that
    `generate --weights` reads, and the trained G goes beside it."""
    if gan.generator_average is None:
        return [(gan.generator, GENERATOR_FILENAME), (gan.discriminator, DISCRIMINATOR_FILENAME)]
    return [
        (gan.generator_average, GENERATOR_FILENAME),
        (gan.generator, RAW_GENERATOR_FILENAME),
        (gan.discriminator, DISCRIMINATOR_FILENAME),
    ]


def _check_finite(gan, step: int) -> None:
    average = gan.generator_average.variables if gan.generator_average is not None else []
    groups = (
        ("generator", gan.generator.variables),
        ("generator average", average),
        ("discriminator", gan.discriminator.variables),
        ("generator optimizer", gan.generator_optimizer.variables),
        ("discriminator optimizer", gan.discriminator_optimizer.variables),
    )
    for owner, variables in groups:
        for variable in variables:
            if "float" not in str(variable.dtype):
                continue
            # Reduced on the device: one boolean crosses to the host per variable, not the weights.
            if not bool(keras.ops.convert_to_numpy(keras.ops.all(keras.ops.isfinite(variable.value)))):
                raise TrainingError(
                    f"non-finite values in {owner} variable {variable.path} after step {step}; not writing a checkpoint"
                )


def _write_optimizers(path: str, gan) -> None:
    with h5py.File(path, "w") as file:
        for group_name, optimizer in zip(OPTIMIZER_GROUPS, (gan.generator_optimizer, gan.discriminator_optimizer)):
            group = file.create_group(group_name)
            for index, variable in enumerate(optimizer.variables):
                value = np.asarray(keras.ops.convert_to_numpy(variable.value))
                if value.dtype.kind == "V" or value.dtype.name == "bfloat16":
                    value = value.astype(np.float32)  # h5py cannot store bfloat16; float32 holds it exactly
                dataset = group.create_dataset(f"{index:05d}", data=value)
                dataset.attrs["path"] = variable.path


def _state_document(state: TrainingState, files: dict) -> dict:
    document = dataclasses.asdict(state)
    document.pop("epoch_order")
    document["has_epoch_order"] = state.epoch_order is not None
    document["format_version"] = FORMAT_VERSION
    document["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    document["files"] = files
    return document


def _rename_to_hidden(path: str, directory: str) -> str:
    """Moves `path` into a new hidden `.tmp-delete-*` folder of `directory` (one atomic rename); returns that folder."""
    hidden = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}delete-", dir=directory)
    os.rename(path, os.path.join(hidden, os.path.basename(path)))
    return hidden


def _remove_atomically(path: str, directory: str) -> None:
    """Deletes a checkpoint folder so that it vanishes in one step: a crash midway leaves only a hidden folder."""
    shutil.rmtree(_rename_to_hidden(path, directory), ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str) -> Checkpoint:
    """Reads and checks one checkpoint folder, without touching any model.

    Only `json`, h5py and `np.load(allow_pickle=False)` read the files: nothing in them is executed.

    Args:
        path: a `ckpt-<step>` folder.

    Returns:
        A `Checkpoint`.

    Raises:
        WeightsError: the folder is incomplete or damaged: a file is missing, its size or SHA-256 differs from the
            list in `state.json`, `state.json` is malformed, an array holds Python objects, or the config is unreadable.
    """
    state_path = os.path.join(path, STATE_FILENAME)
    try:
        with open(state_path) as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {path} is incomplete: it has no {STATE_FILENAME}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"checkpoint {path}: cannot read {STATE_FILENAME} ({error})") from None
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} is not a format-{FORMAT_VERSION} checkpoint state")
    files = document.get("files")
    if not isinstance(files, dict):
        raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} lists no files")
    required = {GENERATOR_FILENAME, DISCRIMINATOR_FILENAME, CONFIG_FILENAME, OPTIMIZERS_FILENAME}
    if document.get("has_epoch_order"):
        required.add(EPOCH_ORDER_FILENAME)
    if not required <= set(files) or not set(files) <= set(CHECKSUMMED_FILENAMES):
        raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} lists files {sorted(files)}, expected {sorted(required)}")
    for name, expected in files.items():
        _verify_file(path, name, expected)
    state = _state_from_document(document, path)
    name_match = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    if name_match and int(name_match.group(1)) != state.step:
        raise WeightsError(f"checkpoint {path} holds step {state.step}, not the step its name says")
    if document.get("has_epoch_order"):
        state.epoch_order = _read_epoch_order(os.path.join(path, EPOCH_ORDER_FILENAME))
    try:
        config = Config.load(os.path.join(path, CONFIG_FILENAME))
    except ConfigError as error:
        raise WeightsError(f"checkpoint {path}: {error}") from None
    if config.ema_decay > 0 and RAW_GENERATOR_FILENAME not in files:
        raise WeightsError(f"checkpoint {path} is incomplete: its config averages G, but it has no {RAW_GENERATOR_FILENAME}")
    optimizer_values = _read_optimizers(os.path.join(path, OPTIMIZERS_FILENAME))
    return Checkpoint(path, config, state, optimizer_values)


def _verify_file(folder: str, name: str, expected) -> None:
    path = os.path.join(folder, name)
    if not isinstance(expected, dict) or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str):
        raise WeightsError(f"checkpoint {folder}: {STATE_FILENAME} has a malformed entry for {name}")
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {folder} is incomplete: {name} is missing")
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        raise WeightsError(f"checkpoint {folder}: {name} has {size} bytes, {expected['bytes']} were written")
    if file_sha256(path) != expected["sha256"]:
        raise WeightsError(f"checkpoint {folder}: {name} differs from what was written (SHA-256 mismatch)")


def _state_from_document(document: dict, path: str) -> TrainingState:
    fields_and_types = {
        "step": int,
        "epoch": int,
        "batch_index": int,
        "rng_state": dict,
        "last_accuracy": (int, float),
        "run_name": str,
        "data_fingerprint": str,
        "backend": str,
        "precision": str,
        "epoch_totals": dict,
        "epoch_metrics": dict,
    }
    values = {}
    for name, kind in fields_and_types.items():
        value = document.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} field {name!r} is missing or malformed")
        values[name] = value
    for name in ("epoch_totals", "epoch_metrics"):
        if not all(isinstance(v, (int, float)) for v in values[name].values()):
            raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} field {name!r} holds non-numbers")
    if min(values["step"], values["epoch"], values["batch_index"]) < 0:
        raise WeightsError(f"checkpoint {path}: {STATE_FILENAME} holds a negative step, epoch or batch")
    return TrainingState(epoch_order=None, **values)


def _read_epoch_order(path: str) -> np.ndarray:
    try:
        order = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            # Object arrays are stored as pickles; loading one could run code, so it is refused, never unpickled.
            raise WeightsError(f"{path} cannot be read without unpickling Python objects; refusing it") from None
        raise WeightsError(f"{path} cannot be read ({error})") from None
    except OSError as error:
        raise WeightsError(f"{path} cannot be read ({error})") from None
    if order.ndim != 1 or order.dtype.kind not in "iu":
        raise WeightsError(f"{path} holds a {order.dtype} array of shape {order.shape}, expected a 1-D integer array")
    return order


def _read_optimizers(path: str) -> Dict[str, List[Tuple[str, np.ndarray]]]:
    values = {}
    try:
        with h5py.File(path, "r") as file:
            for group_name in OPTIMIZER_GROUPS:
                group = file.get(group_name)
                if not isinstance(group, h5py.Group):
                    raise WeightsError(f"{path} has no {group_name} group")
                pairs = []
                for name in sorted(group):
                    dataset = group[name]
                    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "biuf":
                        raise WeightsError(f"{path}: {group_name}/{name} is not a numeric array")
                    variable_path = dataset.attrs.get("path", name)
                    variable_path = variable_path.decode("utf8") if isinstance(variable_path, bytes) else str(variable_path)
                    pairs.append((variable_path, dataset[()]))
                values[group_name] = pairs
    except OSError as error:
        raise WeightsError(f"{path} cannot be read ({error})") from None
    return values


def restore(gan, checkpoint: Checkpoint) -> None:
    """Writes a checkpoint's networks and optimizer variables into `gan` and sets its step's last accuracy.

    Raises:
        WeightsError: the checkpoint's arrays do not fit these networks or optimizers (another architecture).
    """
    optimizers = (gan.generator_optimizer, gan.discriminator_optimizer)
    for group_name, optimizer in zip(OPTIMIZER_GROUPS, optimizers):
        variables, stored = optimizer.variables, checkpoint.optimizer_values[group_name]
        if len(variables) != len(stored):
            raise WeightsError(
                f"checkpoint {checkpoint.path} does not fit: its {group_name} has {len(stored)} variables, "
                f"this run's has {len(variables)}"
            )
        for variable, (stored_path, value) in zip(variables, stored):
            if tuple(variable.shape) != value.shape:
                raise WeightsError(
                    f"checkpoint {checkpoint.path} does not fit: {group_name} variable {stored_path} has shape "
                    f"{value.shape}, this run's {variable.path} has {tuple(variable.shape)}"
                )
    for model, name in _weight_files(gan):
        load_weights_h5(model, os.path.join(checkpoint.path, name))
    for group_name, optimizer in zip(OPTIMIZER_GROUPS, optimizers):
        for variable, (_, value) in zip(optimizer.variables, checkpoint.optimizer_values[group_name]):
            variable.assign(value.astype(variable.dtype))
    # The JAX step keeps its state outside the Keras variables: take it from them again.
    gan.step.reload_variables()
    gan.step.last_accuracy = float(checkpoint.state.last_accuracy)
    gan.step.iterations = checkpoint.state.step


# ----------------------------------------------------------------------------------------------------- the folder


class CheckpointFolder:
    """The `checkpoints/` folder of one output folder: lists, writes, prunes and finds the newest good checkpoint.

    Args:
        directory: the folder (`<output_dir>/checkpoints`); created on the first write.
        keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str, keep: int):
        self.directory = directory
        self.keep = keep

    def steps_and_paths(self) -> List[Tuple[int, str]]:
        """The checkpoint folders present, oldest first (hidden temporary folders excluded)."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _CHECKPOINT_NAME.match(name)
            if match and os.path.isdir(os.path.join(self.directory, name)):
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def save(self, gan, state: TrainingState) -> str:
        """Writes a checkpoint (see `write_checkpoint`), then deletes all but the newest `keep`; returns its path."""
        path = write_checkpoint(self.directory, gan, state)
        for _, old_path in self.steps_and_paths()[: -self.keep]:
            _remove_atomically(old_path, self.directory)
        return path

    def remove_temporary(self) -> List[str]:
        """Deletes hidden `.tmp-*` entries, left by a process killed while writing or deleting; returns them."""
        if not os.path.isdir(self.directory):
            return []
        removed = []
        for name in os.listdir(self.directory):
            if name.startswith(TEMPORARY_PREFIX):
                path = os.path.join(self.directory, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(path)
        return removed

    def load_latest(self) -> Optional[Checkpoint]:
        """Reads the newest checkpoint that is intact, skipping damaged ones with a warning.

        Damaged checkpoints newer than the one returned are deleted: the run continues from an older step and will
        write those steps again.

        Returns:
            The newest intact `Checkpoint`, or `None` when the folder holds none at all.

        Raises:
            WeightsError: there are checkpoints but every one is damaged.
        """
        damaged = []
        for _, path in reversed(self.steps_and_paths()):
            try:
                checkpoint = read_checkpoint(path)
            except WeightsError as error:
                logger.warning("skipping damaged checkpoint: %s", error)
                damaged.append((path, error))
                continue
            for damaged_path, _ in damaged:
                logger.warning("deleting damaged checkpoint %s", damaged_path)
                _remove_atomically(damaged_path, self.directory)
            return checkpoint
        if damaged:
            raise WeightsError(
                f"every checkpoint in {self.directory} is damaged ({damaged[0][1]}); pass --no-resume to start over"
            )
        return None

    def set_aside(self) -> Optional[str]:
        """Renames the folder to `checkpoints-replaced-<time>` (for a fresh start) and returns the new name."""
        if not self.steps_and_paths():
            return None
        target = f"{self.directory}-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while os.path.exists(target):
            target = f"{self.directory}-replaced-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            suffix += 1
        os.rename(self.directory, target)
        return target


def newest_checkpoint_weights(path: str) -> Optional[str]:
    """The generator weights of the newest checkpoint of the run folder `path` (or of the folder holding the file
    `path`), for the message of a `generate --weights` that names top-level weights a killed run never wrote;
    `None` if there is none. The checkpoint folder holds its `config.json` too, so the path works as `--weights`."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for _, checkpoint_path in reversed(CheckpointFolder(os.path.join(folder, CHECKPOINT_FOLDER), keep=1).steps_and_paths()):
        weights = os.path.join(checkpoint_path, GENERATOR_FILENAME)
        if os.path.isfile(weights):
            return weights
    return None


def remove_temporary_outputs(output_dir: str) -> List[str]:
    """Deletes the temporary files a final save killed midway leaves in an output folder; returns their paths.

    `threedgan.weights.save_weights_h5` writes `.tmp-*.h5` and `Config.save` writes `config.json.tmp` before
    renaming them over the real files, so those names never hold anything else.
    """
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        is_temporary = (name.startswith(TEMPORARY_PREFIX) and name.endswith(".h5")) or name == f"{CONFIG_FILENAME}.tmp"
        if is_temporary and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def exclusive_use(directory: str):
    """Holds an exclusive lock on an output folder, so two runs never write (or clean up) the same checkpoints.

    The lock is on the folder itself (no lock file to leave behind) and the kernel drops it when the process dies,
    even by SIGKILL. Where `fcntl` is missing (Windows), this does nothing.

    Raises:
        ConfigError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"another training run is using output folder {directory}; wait for it or pick another --output-dir") from None
        yield
    finally:
        os.close(descriptor)
