"""Training: the chapter's loop over epochs and batches, with an update step that names what it changes.

`train(config)` loads the data, builds both networks and their Adam optimizers, and runs `config.epochs` epochs of
shuffled batches. Each iteration is one `backend_steps` step (D on real, D on generated, G). Scalars go to
TensorBoard every `log_every_steps` iterations (fetched from the device in one go, so the accelerator never waits for
the host), sample renders every `image_every_steps`, checkpoints every `checkpoint_every_steps`, and the weights plus
`config.json` into `config.output_dir` at the end, as the chapter's `generated_volumes/`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np

from threedgan.backend_steps import forward_without_side_effects, make_train_step
from threedgan.config import Config
from threedgan.data import VoxelDataset, load_config_dataset
from threedgan.errors import ConfigError, TrainingError
from threedgan.latent import sample_latents
from threedgan.models import build_discriminator, build_generator
from threedgan.weights import save_weights_h5

logger = logging.getLogger(__name__)

GENERATOR_WEIGHTS = "generator_weights.h5"
DISCRIMINATOR_WEIGHTS = "discriminator_weights.h5"


def accelerator_present() -> bool:
    """Whether the active backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def configure_precision(config: Config) -> str:
    """Sets Keras' global dtype policy from `config.mixed_precision` and returns the compute dtype.

    `auto` picks bfloat16 on a GPU (no loss scaling needed, unlike float16) and float32 elsewhere; the networks'
    final sigmoids and the losses stay float32 either way.
    """
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bfloat16" if accelerator_present() else "float32"
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    return precision


@dataclass
class Gan:
    """The two networks, their optimizers and the compiled step, built from one config."""

    config: Config
    generator: keras.Model
    discriminator: keras.Model
    generator_optimizer: keras.optimizers.Optimizer
    discriminator_optimizer: keras.optimizers.Optimizer
    step: object

    @classmethod
    def build(cls, config: Config) -> "Gan":
        """Builds networks, optimizers and step for `config`, seeding Keras' initialisers with `config.seed`."""
        keras.utils.set_random_seed(config.seed)
        generator = build_generator(config)
        discriminator = build_discriminator(config)
        generator_optimizer = keras.optimizers.Adam(config.generator_learning_rate, beta_1=config.generator_beta_1)
        discriminator_optimizer = keras.optimizers.Adam(
            config.discriminator_learning_rate, beta_1=config.discriminator_beta_1
        )
        step = make_train_step(
            generator,
            discriminator,
            generator_optimizer,
            discriminator_optimizer,
            accuracy_threshold=config.discriminator_accuracy_threshold,
            real_label=config.real_label,
        )
        return cls(config, generator, discriminator, generator_optimizer, discriminator_optimizer, step)

    def save_weights(self, directory: str) -> None:
        """Writes both networks' weights (legacy HDF5 layout) and `config.json` into `directory`."""
        self.step.sync_variables()
        os.makedirs(directory, exist_ok=True)
        save_weights_h5(self.generator, os.path.join(directory, GENERATOR_WEIGHTS))
        save_weights_h5(self.discriminator, os.path.join(directory, DISCRIMINATOR_WEIGHTS))
        self.config.save(directory)


def generate_volumes(generator: keras.Model, latents: np.ndarray, batch_size: int) -> np.ndarray:
    """Runs the generator on latents in chunks of `batch_size`, BatchNorm on batch statistics as in training.

    The chapter's generator always normalises with the statistics of the batch it is given (`training=True`); the
    moving averages lag far behind a generator trained at the chapter's learning rate. Fixed chunks make the output
    for a given list of latents deterministic.

    Returns:
        float32 numpy array (n, 64, 64, 64) of occupancy probabilities.
    """
    outputs = []
    for start in range(0, len(latents), batch_size):
        chunk = keras.ops.convert_to_tensor(latents[start : start + batch_size])
        volumes = forward_without_side_effects(generator, chunk)
        outputs.append(keras.ops.convert_to_numpy(keras.ops.cast(volumes, "float32"))[..., 0])
    return np.concatenate(outputs) if outputs else np.zeros((0, 64, 64, 64), np.float32)


class Trainer:
    """Runs the training loop for one config; `train(config)` is the usual entry."""

    def __init__(self, config: Config, dataset: Optional[VoxelDataset] = None, log_every_steps: int = 10):
        self.config = config
        self.precision = configure_precision(config)
        self.dataset = dataset if dataset is not None else load_config_dataset(config)
        if len(self.dataset) < config.batch_size:
            raise ConfigError(
                f"batch size {config.batch_size} is larger than the data ({len(self.dataset)} volumes); "
                "pass a smaller --batch-size"
            )
        self.gan = Gan.build(config)
        # The whole data set goes to the accelerator once, bit-packed (4 KiB a volume); each step gathers its batch
        # there, so the host sends only indices and latents.
        self.device_volumes = keras.ops.convert_to_tensor(self.dataset.packed)
        self.rng = np.random.default_rng(config.seed)
        self.log_every_steps = max(1, log_every_steps)
        self.step_count = 0
        self.epoch = 0
        run_name = config.run_name or time.strftime(f"{'-'.join(config.categories)}-%Y%m%d-%H%M%S")
        self.run_logdir = os.path.join(config.logdir, run_name)
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

    def train(self) -> dict:
        """Trains for `config.epochs` epochs and returns the last epoch's mean metrics."""
        from threedgan.tensorboard_writer import SummaryWriter

        config = self.config
        os.makedirs(config.output_dir, exist_ok=True)
        config.save(config.output_dir)
        logger.info(
            "training on %d volumes, %d batches of %d per epoch, backend %s, %s",
            len(self.dataset),
            self.batches_per_epoch,
            config.batch_size,
            keras.backend.backend(),
            self.precision,
        )
        epoch_metrics = {}
        started = time.perf_counter()
        with SummaryWriter(self.run_logdir) as writer:
            writer.graph(self.gan.generator)
            writer.graph(self.gan.discriminator)
            while self.epoch < config.epochs:
                progress = keras.utils.Progbar(self.batches_per_epoch, stateful_metrics=["g_loss", "d_loss", "d_acc"])
                pending, totals = [], {}
                for batch_index, indices in enumerate(self.dataset.index_batches(config.batch_size, self.rng)):
                    real = keras.ops.take(self.device_volumes, keras.ops.convert_to_tensor(indices), axis=0)
                    pending.append(self.gan.step(real, *self._latents()))
                    self.step_count += 1
                    last_batch = batch_index + 1 == self.batches_per_epoch or self._budget_spent(started)
                    if len(pending) >= self.log_every_steps or last_batch:
                        for offset, metrics in enumerate(self._fetch(pending)):
                            step = self.step_count - len(pending) + offset + 1
                            writer.scalars(metrics, step, prefix="step/")
                            for name, value in metrics.items():
                                totals[name] = totals.get(name, 0.0) + value
                        progress.update(
                            batch_index + 1,
                            [("g_loss", metrics["g_loss"]), ("d_loss", metrics["d_loss"]), ("d_acc", metrics["d_accuracy"])],
                        )
                        pending = []
                    if config.image_every_steps and self.step_count % config.image_every_steps == 0:
                        self._log_images(writer)
                    if self._budget_spent(started) and not pending:
                        break
                self.epoch += 1
                epoch_metrics = {name: total / (batch_index + 1) for name, total in totals.items()}
                writer.scalars(epoch_metrics, self.epoch, prefix="epoch/")
                self.history.append(epoch_metrics)
                writer.flush()
                if self._budget_spent(started):
                    logger.info("stopping at step %d: max_steps or time budget reached", self.step_count)
                    break
            self._log_images(writer)
        self.gan.save_weights(config.output_dir)
        logger.info("wrote %s, %s and config.json to %s", GENERATOR_WEIGHTS, DISCRIMINATOR_WEIGHTS, config.output_dir)
        return epoch_metrics

    def _budget_spent(self, started: float) -> bool:
        config = self.config
        if config.max_steps is not None and self.step_count >= config.max_steps:
            return True
        return config.time_budget_minutes is not None and time.perf_counter() - started >= 60 * config.time_budget_minutes

    def _fetch(self, pending):
        """Moves a list of per-step metric dicts to the host in one transfer and checks the losses are finite."""
        names = list(pending[0])
        stacked = keras.ops.convert_to_numpy(
            keras.ops.stack([keras.ops.stack([keras.ops.stop_gradient(m[n]) for n in names]) for m in pending])
        )
        rows = [dict(zip(names, map(float, row))) for row in stacked]
        for offset, row in enumerate(rows):
            if not (np.isfinite(row["g_loss"]) and np.isfinite(row["d_loss"])):
                step = self.step_count - len(rows) + offset + 1
                raise TrainingError(
                    f"non-finite loss at step {step} (g_loss={row['g_loss']}, d_loss={row['d_loss']}); "
                    f"the last good weights are in {self.config.output_dir}"
                )
        return rows

    def _log_images(self, writer) -> None:
        from threedgan.render import render_grid

        self.gan.step.sync_variables()
        volumes = generate_volumes(self.gan.generator, self.image_latents, self.config.batch_size)
        writer.image("samples", render_grid(volumes, image_size=128), self.step_count)


def train(config: Config, dataset: Optional[VoxelDataset] = None) -> dict:
    """Trains a 3D-GAN as `config` says.

    Args:
        config: the run's `Config`.
        dataset: volumes to train on; `None` loads them as `config` says.

    Returns:
        The last epoch's mean metrics (`g_loss`, `d_loss`, `d_accuracy_real`, `d_accuracy_fake`, ...).

    Raises:
        DataError: the data cannot be found or read.
        ConfigError: an invalid setting (for example a batch larger than the data).
        TrainingError: a loss became non-finite.
    """
    return Trainer(config, dataset).train()
