"""Training: the chapter's loop over epochs and batches, with an update step that names what it changes.

`train(config)` loads the data, builds both networks and their Adam optimizers, and runs `config.epochs` epochs of
shuffled batches. Each iteration is one `training_step` step (the recipe's D, R1, G and average phases). Scalars go to
TensorBoard every `log_every_steps` iterations (fetched from the device in one go, so the accelerator never waits for
the host), sample renders every `image_every_steps`, checkpoints every `checkpoint_every_steps`, and the weights plus
`config.json` into `config.output_dir` at the end, as the chapter's `generated_volumes/`.

Watching (see `threedgan.monitor`, `threedgan.progress`): shape metrics of fixed latents every
`metrics_every_steps` (occupancy, mean pairwise IoU) and `set_metrics_every_steps` (MMD/COV/1-NNA against a slice
of the training volumes) go to TensorBoard and `<output_dir>/metrics.jsonl`; sample meshes to the MESH tab every
`mesh_every_steps`; the run's whole config as text and hparams. Progress shows epoch k/N and the ETA of the whole
run, at least every 10 s even while one step is slow.

Runs survive: a run finds the newest intact checkpoint in `<output_dir>/checkpoints/` and continues from it, with the
same batches and latents it would have drawn (see `threedgan.checkpoint`). Checkpoints come every
`checkpoint_every_steps` and every `checkpoint_every_minutes` of wall-clock time (the first after at most a
minute). Ctrl-C or SIGTERM says "stopping after this step" at once, then after the step writes a checkpoint and
the top-level weights and `config.json` (what `generate.py --weights <output_dir>/generator_weights.h5` reads) and
exits with 128 + the signal's number; a second signal only skips sample images and metrics. A non-finite loss stops
training before any checkpoint could hold it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np

from threedgan.checkpoint import (
    CHECKPOINT_FOLDER,
    CheckpointFolder,
    TrainingState,
    config_differences,
    dataset_fingerprint,
    exclusive_use,
    remove_temporary_outputs,
    restore,
)
from threedgan.config import Config
from threedgan.data import VoxelDataset, load_config_dataset
from threedgan.distributed import replicate, setup_data_parallel, setup_mirrored, shard_batch
from threedgan.errors import ConfigError, TrainingError, WeightsError
from threedgan.latent import sample_latents
from threedgan.monitor import MetricsLog, TrainingMetrics, record_markdown, run_record, tensorboard_mesh
from threedgan.models import (
    accelerator_present,
    build_discriminator,
    build_generator,
    configure_precision,
    generate_volumes,
)
from threedgan.progress import Progress, device_description, format_duration, format_step_time
from threedgan.training_step import Recipe, make_train_step, to_device
from threedgan.weights import save_weights_h5

logger = logging.getLogger(__name__)

GENERATOR_WEIGHTS = "generator_weights.h5"
DISCRIMINATOR_WEIGHTS = "discriminator_weights.h5"
# `auto` continues from a checkpoint in the output folder if there is one; `require` (`--resume`) insists on one;
# `never` (`--no-resume`) sets earlier checkpoints aside and starts from scratch.
RESUME_MODES = ("auto", "require", "never")
# Signals that stop training cleanly: Ctrl-C, and what schedulers and `kill` send before a SIGKILL.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# `epoch_totals` holds each metric's sum and, under this prefix, how many steps reported it.
COUNT_PREFIX = "count/"
# The first clock checkpoint of a process comes after at most this long, so that a run killed early resumes.
FIRST_CHECKPOINT_SECONDS = 60.0
# The command to train on a GPU instead, for the CPU warning (README "Get running" and "Speed").
GPU_COMMAND = 'pip install keras "jax[cuda12]", then KERAS_BACKEND=jax python scripts/train.py with the same flags'


class _SkipOptionalWork(BaseException):
    """Raised by the stop-signal handler inside sample images or metrics, which a stopping run does without (a
    BaseException, as KeyboardInterrupt, so that no `except Exception` on the way swallows it)."""


class _HostWork:
    """One thread for the host's share of sample images and metrics (rendering, meshing, distances, writing them),
    so the accelerator trains the next steps meanwhile; only generating the samples holds up training.

    Pieces run one at a time, in the order given. `submit` waits while two are outstanding (so memory stays bounded
    and a slow host cannot fall ever further behind), and `wait` re-raises a piece's exception in the training
    thread, as if it had run there.
    """

    OUTSTANDING = 2

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threedgan-host")
        self._pieces = []

    def submit(self, function, *arguments) -> None:
        while len(self._pieces) >= self.OUTSTANDING:
            self._pieces.pop(0).result()
        self._pieces.append(self._executor.submit(function, *arguments))

    def wait(self) -> None:
        """Until every piece has run."""
        while self._pieces:
            self._pieces.pop(0).result()

    def __enter__(self) -> "_HostWork":
        return self

    def __exit__(self, exception_type, exception, traceback) -> bool:
        """Waits for every piece; while another exception leaves the run (a stop signal's, a diverged loss), a
        piece's own error is logged rather than raised over it."""
        try:
            self.wait()
        except Exception:
            if exception_type is None:
                raise
            logger.exception("sample images or metrics failed while the run was stopping")
        finally:
            self._executor.shutdown(wait=True)
        return False


class TrainingInterrupted(KeyboardInterrupt):
    """Raised once a stop signal has been honoured; the message says what was saved where.

    Attributes:
        exit_status: 128 + the signal's number, the shell's convention (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number


@dataclass
class Gan:
    """The two networks, their optimizers, G's average (when the recipe keeps one) and the step, from one config."""

    config: Config
    generator: keras.Model
    discriminator: keras.Model
    generator_optimizer: keras.optimizers.Optimizer
    discriminator_optimizer: keras.optimizers.Optimizer
    generator_average: Optional[keras.Model]
    step: object

    @classmethod
    def build(cls, config: Config) -> "Gan":
        """Builds networks, optimizers and step for `config`, seeding Keras' initialisers with `config.seed`."""
        keras.utils.set_random_seed(config.seed)
        generator = build_generator(config)
        discriminator = build_discriminator(config)
        generator_average = None
        if config.ema_decay > 0:
            # The average starts as a copy of G, so early samples are G's own (StyleGAN2's `G_ema = copy(G)`).
            generator_average = build_generator(config)
            generator_average.set_weights(generator.get_weights())
        generator_optimizer = keras.optimizers.Adam(
            config.generator_learning_rate, beta_1=config.generator_beta_1, beta_2=config.generator_beta_2
        )
        discriminator_optimizer = keras.optimizers.Adam(
            config.discriminator_learning_rate, beta_1=config.discriminator_beta_1, beta_2=config.discriminator_beta_2
        )
        step = make_train_step(
            generator,
            discriminator,
            generator_optimizer,
            discriminator_optimizer,
            recipe=Recipe.from_config(config),
            generator_average=generator_average,
        )
        return cls(config, generator, discriminator, generator_optimizer, discriminator_optimizer, generator_average, step)

    @property
    def sampling_generator(self) -> keras.Model:
        """The generator that samples are drawn from and that is saved: G's average if the recipe keeps one."""
        return self.generator_average if self.generator_average is not None else self.generator

    def save_weights(self, directory: str) -> None:
        """Writes the sampling generator's and D's weights (legacy HDF5 layout) and `config.json` into `directory`
        as one set, with a manifest, so that a process killed between two files leaves a mix that generate and
        evaluate refuse rather than use (see `threedgan.run_set`)."""
        from threedgan.run_set import write_final_set

        self.step.sync_variables()
        write_final_set(directory, self.sampling_generator, self.discriminator, self.config)


class Trainer:
    """Runs the training loop for one config; `train(config)` is the usual entry.

    Args:
        config: the run's `Config`.
        dataset: volumes to train on; `None` loads them as `config` says.
        log_every_steps: how many steps' metrics are fetched from the device at once.
        resume: one of `RESUME_MODES`: what to do with checkpoints already in `<output_dir>/checkpoints`.
        hparams: write the run's config as an HPARAMS session; `False` where the caller writes its own (tune's
            trials: TensorBoard keeps the first session of a run folder).
    """

    def __init__(
        self,
        config: Config,
        dataset: Optional[VoxelDataset] = None,
        log_every_steps: int = 10,
        resume: str = "auto",
        hparams: bool = True,
    ):
        if resume not in RESUME_MODES:
            raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
        self.config = config
        self.precision = configure_precision(config)
        self.dataset = dataset if dataset is not None else load_config_dataset(config)
        if len(self.dataset) < config.batch_size:
            raise ConfigError(
                f"batch size {config.batch_size} is larger than the data ({len(self.dataset)} volumes); "
                "pass a smaller --batch-size"
            )
        # Data parallel (`--devices N`): the distribution must be set before the networks are built, so that their
        # variables are created replicated on every device.
        self.distribution = None  # jax: keras.distribution.DataParallel
        self.strategy = None  # tensorflow: tf.distribute.MirroredStrategy
        if config.devices and config.devices > 1:
            if config.batch_size % config.devices:
                raise ConfigError(
                    f"batch size {config.batch_size} does not split over {config.devices} devices; "
                    f"pass a --batch-size that is a multiple of {config.devices}"
                )
            if keras.backend.backend() == "tensorflow":
                # tf.distribute.MirroredStrategy: networks and optimizers built under its scope are mirrored, and
                # the step splits each global batch over the replicas itself (no sharding here).
                self.strategy = setup_mirrored(config.devices)
            else:
                self.distribution = setup_data_parallel(config.devices)
        with self.strategy.scope() if self.strategy is not None else contextlib.nullcontext():
            self.gan = Gan.build(config)
        # The whole data set goes to the accelerator once, bit-packed (4 KiB a volume); each step gathers its batch
        # there, so the host sends only indices and latents. With several devices each holds a copy.
        self.device_volumes = keras.ops.convert_to_tensor(self.dataset.packed)
        if self.distribution is not None:
            self.device_volumes = replicate(self.distribution, self.device_volumes)
        self.rng = np.random.default_rng(config.seed)
        self.log_every_steps = max(1, log_every_steps)
        self.step_count = 0
        self.epoch = 0
        # Where the run stands inside the current epoch; `None` order means the next epoch has not drawn one yet.
        self.epoch_order = None
        self.batch_index = 0
        self.epoch_totals = {}
        self.epoch_metrics = {}
        self.resume = resume
        self.checkpoints = CheckpointFolder(os.path.join(config.output_dir, CHECKPOINT_FOLDER), config.keep_checkpoints)
        self.last_checkpoint = None  # (path, step) of the newest checkpoint written or resumed from
        self.stop_signal = None  # set by a signal handler, honoured between steps
        self.write_hparams = hparams
        self._optional_work = False  # inside sample images or metrics, which a stop signal cuts short
        self.host_work = None  # `_HostWork` while `train` runs
        self.signals_received = 0
        self.metrics = TrainingMetrics(config, self.dataset)
        self.metrics_log = None
        self.progress = None
        self.device = None
        self._session_steps = 0  # steps done by this process
        self._session_start_step = 0
        self._checkpoint_clock = None  # monotonic time of this process's start or its last checkpoint
        self._clock_checkpoints = 0  # checkpoints written by this process
        self._estimate_reported = False
        self._last_metrics_step = None
        self._last_samples_step = None
        self.run_name = config.run_name or time.strftime(f"{'-'.join(config.categories)}-%Y%m%d-%H%M%S")
        self.run_logdir = os.path.join(config.logdir, self.run_name)
        # Fixed latents for the images in TensorBoard, so successive images show the same shapes improving.
        self.image_latents = sample_latents(config.images_per_log, config.z_size, config.z_stddev, seed=config.seed + 1)
        self.history = []

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.config.batch_size

    def _latents(self):
        config = self.config
        return (
            sample_latents(config.batch_size, config.z_size, config.z_stddev, seed=self.rng),
            sample_latents(config.batch_size, config.z_size, config.z_stddev, seed=self.rng),
        )

    @functools.cached_property
    def data_fingerprint(self) -> str:
        return dataset_fingerprint(self.dataset)

    def train(self) -> dict:
        """Trains until `config.epochs` epochs are done and returns the last epoch's mean metrics.

        First continues from the newest intact checkpoint of `<output_dir>/checkpoints` (as `resume` says).

        Raises:
            TrainingError: a loss or a weight became non-finite; the newest checkpoint is still the last good one.
            TrainingInterrupted: Ctrl-C or SIGTERM; a checkpoint and the top-level weights and config.json were
                written after the current step.
            ConfigError: a checkpoint of another config or other data is in the way, `--resume` found none, or
                another run is using the output folder.
            WeightsError: every checkpoint present is damaged, or one does not fit the networks.
        """
        from threedgan.tensorboard_writer import SummaryWriter

        config = self.config
        os.makedirs(config.output_dir, exist_ok=True)
        with exclusive_use(config.output_dir):
            self._start_or_resume()
            self.device = device_description()
            total_steps = self._total_steps()
            logger.info(
                "training on %s, backend %s, %s, preset %s: %d volumes, %d steps of %d an epoch × %d epochs, %s steps%s%s",
                self.device,
                keras.backend.backend(),
                self.precision,
                config.preset,
                len(self.dataset),
                self.batches_per_epoch,
                config.batch_size,
                config.epochs,
                f"{total_steps:,}",
                " (--max-steps)" if total_steps < self.batches_per_epoch * config.epochs else "",
                f" (from step {self.step_count:,})" if self.step_count else "",
            )
            if not accelerator_present():
                logger.warning(
                    "training on the CPU: fine for tests and smoke runs, far too slow for real training (10–60 s a "
                    "step at batch 32 on 2 cores, the estimate follows after the first steps); on an NVIDIA GPU: %s",
                    GPU_COMMAND,
                )
            if keras.backend.backend() == "torch" and accelerator_present():
                logger.info("hint: on an H100 the JAX backend (KERAS_BACKEND=jax) ran this step 5x faster; README 'Speed'")
            self.metrics_log = MetricsLog(config.output_dir, self.run_name)
            if self.step_count and self.metrics_log.drop_after(self.step_count):
                logger.info("dropped the lines of %s past step %d: they are measured again", self.metrics_log.path, self.step_count)
            started = time.perf_counter()
            self._checkpoint_clock = time.monotonic()
            self._session_start_step = self.step_count
            self.progress = Progress(
                total_steps,
                self.batches_per_epoch,
                config.epochs,
                start_step=self.step_count,
                time_budget_seconds=60 * config.time_budget_minutes if config.time_budget_minutes else None,
                warmup_steps=self.gan.step.recipe.steps_to_compile(self.gan.step.iterations),
            )
            self.host_work = _HostWork()
            with SummaryWriter(self.run_logdir) as writer, self._deferred_stop_signals(), self.host_work:
                self._write_graphs()
                self._write_run_record(writer)
                self.progress.start()
                try:
                    while self.epoch < config.epochs and not self._budget_spent(started):
                        self._train_epoch(writer, started)
                finally:
                    self.progress.close()
                if self.epoch < config.epochs:
                    logger.info("stopping at step %d: max_steps or time budget reached", self.step_count)
                if self._last_samples_step != self.step_count:
                    self._log_images(writer, meshes=bool(config.mesh_every_steps))
                # The end's own point, for runs long enough to have had periodic ones (a smoke run skips the cost).
                every, every_set = config.metrics_every_steps, config.set_metrics_every_steps
                if (every and self.step_count >= every) or (every_set and self.step_count >= every_set):
                    if self._last_metrics_step != self.step_count:
                        self._log_metrics(writer, with_set_metrics=bool(every_set) and self.step_count >= every_set)
                self.host_work.wait()
                self._report_metrics_cost(started)
            if self._checkpoints_on() and self._steps_since_checkpoint():
                self._save_checkpoint()
            # config.json is written only here and by a stop signal (`_stop`), beside the weights it describes: a run
            # that fails leaves an earlier run's weights and config in the output folder as they were.
            self.gan.save_weights(config.output_dir)
        logger.info("wrote %s, %s and config.json to %s", GENERATOR_WEIGHTS, DISCRIMINATOR_WEIGHTS, config.output_dir)
        return self.epoch_metrics

    def _write_graphs(self) -> None:
        """Each network's graph in its own run folder (`<run>/graph_generator`, `<run>/graph_discriminator`):
        TensorBoard keeps one graph per run folder, so two in one folder would hide the first. Only where the
        backend has graphs (TensorFlow), so JAX and PyTorch runs get no empty graph runs, and once per run folder
        (a resumed run's graphs are already there)."""
        from threedgan.tensorboard_writer import SummaryWriter

        if not SummaryWriter.graphs_supported():
            return
        for model in (self.gan.generator, self.gan.discriminator):
            folder = os.path.join(self.run_logdir, f"graph_{model.name}")
            if os.path.isdir(folder) and any(name.startswith("events.out.tfevents") for name in os.listdir(folder)):
                continue
            with SummaryWriter(folder) as graph_writer:
                graph_writer.graph(model)

    def _write_run_record(self, writer) -> None:
        """The whole config plus backend, precision, device and versions, as TensorBoard text and hparams."""
        record = run_record(self.config, self.precision, self.device)
        writer.text("config", record_markdown(record), self.step_count)
        if self.write_hparams:
            writer.hparams(record)
        writer.flush()

    def _total_steps(self) -> int:
        total = self.config.epochs * self.batches_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps is not None else total

    def _budget_spent(self, started: float) -> bool:
        """Whether `max_steps` (counted over the whole run) or this process's time budget is used up."""
        config = self.config
        if config.max_steps is not None and self.step_count >= config.max_steps:
            return True
        return config.time_budget_minutes is not None and time.perf_counter() - started >= 60 * config.time_budget_minutes

    def _train_epoch(self, writer, started: float) -> None:
        """Runs the rest of the current epoch (all of it, unless resumed mid-epoch) or until the budget is spent."""
        config = self.config
        if self.epoch_order is None:
            # Drawn here, not in the data set: the order is part of the run's state, so a resumed run sees the same batches.
            self.epoch_order = self.rng.permutation(len(self.dataset))
            self.batch_index, self.epoch_totals = 0, {}
        pending = []
        while True:
            start = self.batch_index * config.batch_size
            indices = self.epoch_order[start : start + config.batch_size]
            real = keras.ops.take(self.device_volumes, to_device(indices), axis=0)
            batch = (real, *self._latents())
            if self.distribution is not None:
                # Each device gets its slice of the global batch; the jitted step then runs as one SPMD program.
                batch = tuple(shard_batch(self.distribution, array) for array in batch)
            pending.append(self.gan.step(*batch))
            self.step_count += 1
            self.batch_index += 1
            self._session_steps += 1
            self.progress.step_done(self.step_count, self.epoch, self.batch_index)
            last_batch = self.batch_index == self.batches_per_epoch
            budget_spent = self._budget_spent(started)
            checkpoint_due = (
                bool(config.checkpoint_every_steps) and self.step_count % config.checkpoint_every_steps == 0
            ) or self._checkpoint_clock_due()
            images_due = bool(config.image_every_steps) and self.step_count % config.image_every_steps == 0
            meshes_due = bool(config.mesh_every_steps) and self.step_count % config.mesh_every_steps == 0
            metrics_due, set_metrics_due = self.metrics.due(self.step_count)
            stopping = self.stop_signal is not None
            # The first step and the two after every variant of the step has compiled are fetched at once: their
            # times give the start-up estimate.
            if (
                len(pending) >= self.log_every_steps
                or last_batch
                or budget_spent
                or checkpoint_due
                or stopping
                or self._session_steps in (1, self.progress.warmup_steps, self.progress.warmup_steps + 1)
                or images_due
                or meshes_due
                or metrics_due
            ):
                # Losses are checked before a checkpoint is written, so no checkpoint ever holds a diverged state.
                self._record(pending, writer)
                pending = []
            # A stopping run skips sample images and metrics: the signal takes effect after this step.
            if (images_due or meshes_due) and self.stop_signal is None:
                self._log_images(writer, images=images_due, meshes=meshes_due)
            if metrics_due and self.stop_signal is None:
                self._log_metrics(writer, with_set_metrics=set_metrics_due)
            if last_batch:
                self._end_epoch(writer)
            elif budget_spent:
                self._report_partial_epoch(writer)
            if checkpoint_due:
                self._save_checkpoint()
            if self.stop_signal is not None:
                self._stop()
            if last_batch or budget_spent:
                return

    def _record(self, pending, writer) -> None:
        for offset, metrics in enumerate(self._fetch(pending)):
            step = self.step_count - len(pending) + offset + 1
            writer.scalars(metrics, step, prefix="step/")
            for name, value in metrics.items():
                self.epoch_totals[name] = self.epoch_totals.get(name, 0.0) + value
                # Counted, since not every step reports every metric (R1).
                self.epoch_totals[COUNT_PREFIX + name] = self.epoch_totals.get(COUNT_PREFIX + name, 0.0) + 1
        self.progress.synced(self.step_count, metrics)
        if not self._estimate_reported and (
            self._session_steps > self.progress.warmup_steps or self.step_count >= self._total_steps()
        ):
            self._estimate_reported = True
            self._report_estimate()

    def _report_estimate(self) -> None:
        """The start-up line, once this session's first steps are timed: compilation, step time, total."""
        progress = self.progress
        remaining = progress.remaining_seconds()
        elapsed = time.monotonic() - progress.started
        steps_left = max(0, self._total_steps() - self.step_count)
        # A run shorter than its warm-up reports its first step alone.
        warmup, first = progress.warmup_steps, progress.warmup_seconds
        if first is None:
            warmup, first = 1, progress.first_step_seconds
        text = (
            f"first {'step' if warmup == 1 else f'{warmup} steps'} {format_step_time(first)} (compilation included), then "
            f"{format_step_time(progress.seconds_per_step())} a step: {steps_left:,} steps to go, "
            f"estimated total {format_duration(None if remaining is None else elapsed + remaining)}"
            + (" (time budget)" if self.config.time_budget_minutes else "")
        )
        if accelerator_present():
            logger.info("%s on %s", text, self.device)
        else:
            logger.warning("%s on the CPU: CPUs are for tests and smoke runs; on an NVIDIA GPU: %s", text, GPU_COMMAND)

    def _report_partial_epoch(self, writer) -> None:
        """The budget ended training mid-epoch: report the means of the batches done, as if the epoch ended there.

        The position in the epoch stays as it is, so the final checkpoint lets a run with a larger budget continue
        exactly where this one stopped.
        """
        self.epoch_metrics = self._epoch_means()
        writer.scalars(self.epoch_metrics, self.epoch + 1, prefix="epoch/")
        self.history.append(self.epoch_metrics)
        writer.flush()

    def _epoch_means(self) -> dict:
        totals = self.epoch_totals
        return {name: total / totals[COUNT_PREFIX + name] for name, total in totals.items() if not name.startswith(COUNT_PREFIX)}

    def _end_epoch(self, writer) -> None:
        self.epoch += 1
        self.progress.end_epoch(self.epoch)
        self.epoch_metrics = self._epoch_means()
        writer.scalars(self.epoch_metrics, self.epoch, prefix="epoch/")
        self.history.append(self.epoch_metrics)
        writer.flush()
        self.epoch_order, self.batch_index, self.epoch_totals = None, 0, {}

    # ------------------------------------------------------------------------------------- checkpoints and resuming

    def _start_or_resume(self) -> None:
        """Clears what a killed run left half-written, then continues from a checkpoint as `self.resume` says."""
        for path in self.checkpoints.remove_temporary() + remove_temporary_outputs(self.config.output_dir):
            logger.info("removed %s, left by an interrupted write", path)
        if self.resume == "never":
            moved = self.checkpoints.set_aside()
            if moved:
                logger.warning("--no-resume: moved the earlier checkpoints to %s", moved)
            return
        checkpoint = self.checkpoints.load_latest()
        if checkpoint is None:
            if self.resume == "require":
                raise ConfigError(f"--resume: no checkpoint to resume from in {self.checkpoints.directory}")
            return
        self._resume_from(checkpoint)

    def _resume_from(self, checkpoint) -> None:
        differences = config_differences(checkpoint.config, self.config)
        if differences:
            listed = "; ".join(f"{name} {saved!r} there, {current!r} now" for name, saved, current in differences)
            raise ConfigError(
                f"checkpoint {checkpoint.path} was written with another config ({listed}); "
                "pass --no-resume to start over, or another --output-dir"
            )
        state = checkpoint.state
        if state.data_fingerprint != self.data_fingerprint:
            raise ConfigError(
                f"checkpoint {checkpoint.path} was trained on other volumes than this run loads; "
                "pass --no-resume to start over, or another --output-dir"
            )
        if state.epoch_order is not None and not np.array_equal(np.sort(state.epoch_order), np.arange(len(self.dataset))):
            raise WeightsError(f"checkpoint {checkpoint.path}: its epoch order is not an order of this run's volumes")
        if (state.backend, state.precision) != (keras.backend.backend(), self.precision):
            logger.warning(
                "checkpoint %s was written by backend %s in %s, this run uses %s in %s: it continues, but not bit for bit",
                checkpoint.path, state.backend, state.precision, keras.backend.backend(), self.precision,
            )
        restore(self.gan, checkpoint)
        try:
            self.rng.bit_generator.state = state.rng_state
        except (TypeError, ValueError, KeyError) as error:
            raise WeightsError(f"checkpoint {checkpoint.path} holds an unusable random generator state ({error})") from None
        self.step_count, self.epoch, self.batch_index = state.step, state.epoch, state.batch_index
        self.epoch_order = state.epoch_order
        self.epoch_totals, self.epoch_metrics = dict(state.epoch_totals), dict(state.epoch_metrics)
        if self.config.run_name is None:
            # Keep writing to the interrupted run's TensorBoard folder, so its charts simply continue.
            self.run_name = state.run_name
            self.run_logdir = os.path.join(self.config.logdir, self.run_name)
        self.last_checkpoint = (checkpoint.path, state.step)
        logger.info(
            "resuming from %s: step %d, epoch %d, batch %d of %d",
            checkpoint.path, state.step, state.epoch + 1, state.batch_index, self.batches_per_epoch,
        )

    def _steps_since_checkpoint(self) -> int:
        return self.step_count - (self.last_checkpoint[1] if self.last_checkpoint else 0)

    def _save_checkpoint(self) -> str:
        if self.host_work is not None:
            # metrics.jsonl holds every line up to this step before the checkpoint does (a resume keeps those lines).
            self.host_work.wait()
        state = TrainingState(
            step=self.step_count,
            epoch=self.epoch,
            batch_index=self.batch_index,
            epoch_order=self.epoch_order,
            rng_state=self.rng.bit_generator.state,
            last_accuracy=float(self.gan.step.last_accuracy),
            run_name=self.run_name,
            data_fingerprint=self.data_fingerprint,
            backend=keras.backend.backend(),
            precision=self.precision,
            epoch_totals=dict(self.epoch_totals),
            epoch_metrics=dict(self.epoch_metrics),
        )
        try:
            path = self.checkpoints.save(self.gan, state)
        except TrainingError as error:
            raise TrainingError(f"{error}; {self._last_checkpoint_text()}") from None
        self.last_checkpoint = (path, self.step_count)
        now = time.monotonic()
        since = now - self._checkpoint_clock if self._checkpoint_clock is not None else None
        # A line for each, except when step checkpoints come often (then only in --debug).
        level = logging.INFO if since is None or since >= 30 or self._clock_checkpoints == 0 else logging.DEBUG
        logger.log(level, "wrote checkpoint %s (step %d)", path, self.step_count)
        self._checkpoint_clock = now
        self._clock_checkpoints += 1
        return path

    def _checkpoints_on(self) -> bool:
        return bool(self.config.checkpoint_every_steps or self.config.checkpoint_every_minutes)

    def _checkpoint_clock_due(self) -> bool:
        """Whether `checkpoint_every_minutes` have passed since the last checkpoint (this session's first: at most
        `FIRST_CHECKPOINT_SECONDS` after its start)."""
        minutes = self.config.checkpoint_every_minutes
        if not minutes or self._checkpoint_clock is None:
            return False
        interval = 60.0 * minutes
        if self._clock_checkpoints == 0:
            interval = min(interval, FIRST_CHECKPOINT_SECONDS)
        return time.monotonic() - self._checkpoint_clock >= interval

    def _last_checkpoint_text(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written" + ("" if self._checkpoints_on() else " (checkpoints are off)")
        return f"the last good checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"

    def _stop(self) -> None:
        """Honours a stop signal between two steps: writes a checkpoint and the top-level weights and config (what
        `generate.py --weights <output_dir>/generator_weights.h5` reads), then raises `TrainingInterrupted`."""
        signal_name = signal.Signals(self.stop_signal).name
        self.progress.set_status("writing the checkpoint and weights")
        if not self._checkpoints_on():
            saved = "checkpoints are off (--checkpoint-every-steps 0 --checkpoint-every-minutes 0), so it cannot resume"
        else:
            if self._steps_since_checkpoint():
                self._save_checkpoint()
            saved = f"checkpoint in {self.last_checkpoint[0]}; run the same command again to resume"
        weights = os.path.join(self.config.output_dir, GENERATOR_WEIGHTS)
        self.gan.save_weights(self.config.output_dir)
        raise TrainingInterrupted(
            f"interrupted by {signal_name} after step {self.step_count}: {saved}; the weights of step "
            f"{self.step_count} are in {weights} (python scripts/generate.py --weights {weights})",
            self.stop_signal,
        )

    @contextlib.contextmanager
    def _deferred_stop_signals(self):
        """Turns Ctrl-C and SIGTERM into a request that the loop honours after the current step.

        Stopping inside a step could leave the variables one step ahead of the step count; between steps, the
        checkpoint describes the state exactly. Sample images and metrics in progress are cut short. Further
        signals change nothing but the message: the run still writes its checkpoint and weights, and exits with
        128 + the first signal's number (SIGKILL is the way to abandon them).

        The message comes at once, even while a long step holds the main thread (where Python runs signal
        handlers): the signal's number also goes to a pipe (`signal.set_wakeup_fd`) that a thread reads. Only the
        main thread may install signal handlers; elsewhere signals keep their usual effect.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        announced_by_thread = False

        def request_stop(signal_number, frame):
            if self.stop_signal is None:
                self.stop_signal = signal_number
            if not announced_by_thread:
                self.signals_received += 1
                self._announce_signal(signal_number, self.signals_received)
            if self._optional_work:
                self._optional_work = False
                raise _SkipOptionalWork

        previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        watcher = None
        try:
            previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except (ValueError, OSError):
            previous_wakeup = None
        else:
            announced_by_thread = True
            watcher = threading.Thread(target=self._watch_signals, args=(read_end,), name="threedgan-signals", daemon=True)
            watcher.start()
        try:
            yield
        finally:
            for number, handler in previous.items():
                if handler is not None:
                    signal.signal(number, handler)
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
            os.close(write_end)  # the watcher reads what is left, then the end of the pipe
            if watcher is not None:
                watcher.join(timeout=10)
            os.close(read_end)

    def _watch_signals(self, read_end: int) -> None:
        """Announces each stop signal as it arrives (see `_deferred_stop_signals`)."""
        stop_numbers = {int(number) for number in STOP_SIGNALS}
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in stop_numbers:
                    self.signals_received += 1
                    self._announce_signal(number, self.signals_received)

    def _announce_signal(self, signal_number: int, count: int) -> None:
        name = signal.Signals(signal_number).name
        running = self.step_count + 1
        if count == 1:
            logger.warning(
                "%s: stopping after this step (step %d), then writing a checkpoint and %s, %s and config.json to %s",
                name, running, GENERATOR_WEIGHTS, DISCRIMINATOR_WEIGHTS, self.config.output_dir,
            )
        else:
            since = f"step {self.last_checkpoint[1]}" if self.last_checkpoint else "the start"
            logger.warning(
                "%s again: already stopping after step %d, skipping images and metrics; the checkpoint and weights "
                "are still written (SIGKILL abandons them and loses the steps since %s)", name, running, since,
            )

    @contextlib.contextmanager
    def _optional(self, what: str):
        """Runs sample images or metrics so that a stop signal cuts them short (they are not needed to resume)."""
        self._optional_work = True
        try:
            yield
        except _SkipOptionalWork:
            logger.info("skipped the %s of step %d: stopping", what, self.step_count)
        finally:
            self._optional_work = False

    def _fetch(self, pending):
        """Moves a list of per-step metric dicts to the host in one transfer and checks the losses are finite."""
        # Steps may report different metrics (R1 only in the iterations that add it): one flat vector for all.
        keys = [(index, name) for index, metrics in enumerate(pending) for name in metrics]
        flat = keras.ops.convert_to_numpy(keras.ops.stack([keras.ops.stop_gradient(pending[i][n]) for i, n in keys]))
        rows = [{} for _ in pending]
        for (index, name), value in zip(keys, flat):
            rows[index][name] = float(value)
        for offset, row in enumerate(rows):
            if not (np.isfinite(row["g_loss"]) and np.isfinite(row["d_loss"])):
                step = self.step_count - len(rows) + offset + 1
                raise TrainingError(
                    f"non-finite loss at step {step} (g_loss={row['g_loss']}, d_loss={row['d_loss']}); training "
                    f"stopped, {self._last_checkpoint_text()}"
                )
        return rows

    def _log_images(self, writer, images: bool = True, meshes: bool = False) -> None:
        """Sample renders (`samples`) and meshes (`mesh/sample_N`, the MESH tab) of the fixed image latents: generated
        here, rendered and written on the host-work thread."""
        if self.stop_signal is not None:
            return
        with self._optional("sample images"):
            self.progress.set_status("sample images")
            self.gan.step.sync_variables()
            volumes = generate_volumes(self.gan.sampling_generator, self.image_latents, self.config.batch_size)
            self._last_samples_step = self.step_count
            self.host_work.submit(self._write_samples, writer, volumes, self.step_count, images, meshes)
        self.progress.set_status("")

    @staticmethod
    def _write_samples(writer, volumes, step: int, images: bool, meshes: bool) -> None:
        from threedgan.render import render_grid

        if images:
            writer.image("samples", render_grid(volumes, image_size=128), step)
        if meshes:
            for index, volume in enumerate(volumes):
                mesh = tensorboard_mesh(volume)
                if mesh is not None:
                    vertices, faces, colors = mesh
                    writer.mesh(f"mesh/sample_{index}", vertices, faces, step, colors=colors)

    def _log_metrics(self, writer, with_set_metrics: bool) -> None:
        """Shape metrics of the fixed metric latents to TensorBoard (`metrics/*`) and `metrics.jsonl`: the samples
        generated here, measured and written on the host-work thread."""
        if self.stop_signal is not None:
            return
        with self._optional("metrics"):
            self.progress.set_status("metrics")
            self.gan.step.sync_variables()
            samples, seconds = self.metrics.generate(self.gan.sampling_generator)
            self._last_metrics_step = self.step_count
            self.host_work.submit(self._write_metrics, writer, samples, seconds, with_set_metrics, self.step_count)
        self.progress.set_status("")

    def _write_metrics(self, writer, samples, seconds: float, with_set_metrics: bool, step: int) -> None:
        results = self.metrics.measure(samples, seconds, with_set_metrics)
        scalars = {name: value for name, value in results.items() if name not in ("samples", "references")}
        writer.scalars(scalars, step, prefix="metrics/")
        self.metrics_log.append(step, step / self.batches_per_epoch, results)

    def _report_metrics_cost(self, started: float) -> None:
        if self.metrics.evaluations:
            elapsed = time.perf_counter() - started
            logger.info(
                "metrics: %d evaluations, %.2f s each, %.1f %% of this process's %s",
                self.metrics.evaluations,
                self.metrics.seconds / self.metrics.evaluations,
                100.0 * self.metrics.seconds / max(elapsed, 1e-9),
                format_duration(elapsed),
            )


def train(config: Config, dataset: Optional[VoxelDataset] = None, resume: str = "auto") -> dict:
    """Trains a 3D-GAN as `config` says, continuing from a checkpoint in `config.output_dir` if there is one.

    Args:
        config: the run's `Config`.
        dataset: volumes to train on; `None` loads them as `config` says.
        resume: `"auto"` continues from the newest intact checkpoint if any, `"require"` fails without one,
            `"never"` sets earlier checkpoints aside and starts from scratch.

    Returns:
        The last epoch's mean metrics (`g_loss`, `d_loss`, `d_accuracy_real`, `d_accuracy_fake`, ...).

    Raises:
        DataError: the data cannot be found or read.
        ConfigError: an invalid setting (for example a batch larger than the data).
        TrainingError: a loss became non-finite.
        TrainingInterrupted: Ctrl-C or SIGTERM (a checkpoint and the top-level weights were written first).
        WeightsError: every checkpoint in the output folder is damaged, or one does not fit the networks.
    """
    return Trainer(config, dataset, resume=resume).train()
