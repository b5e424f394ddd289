"""One typed configuration for a run: data, networks, training recipe and outputs.

Every hyper-parameter lives here once. Scripts build a `Config` from a preset plus command-line overrides, the
training loop saves it as `config.json` beside the weights, and `generate`/`evaluate` rebuild the networks and the
latent prior from that file, so training and generation can never disagree (the book samples N(0, 0.33) in training
but N(0, 1) at generation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from threedgan.errors import ConfigError

CONFIG_FILENAME = "config.json"
# Speed settings (see `threedgan.models`): "auto" is resolved per backend by `resolve_data_format` /
# `resolve_deconvolution`.
DATA_FORMAT_CHOICES = ("auto", "channels_last", "channels_first")
DECONVOLUTION_CHOICES = ("auto", "transposed", "subpixel")

# The chapter's recipe (Packt, chapter 2) and the authors' (Wu et al. 2016, section 4). `better` keeps the chapter's
# networks and changes only the training recipe; see README "Presets".
PRESETS = {
    "book": dict(
        batch_size=32,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-5,
        discriminator_beta_1=0.9,
        discriminator_accuracy_threshold=None,
    ),
    "paper": dict(
        batch_size=100,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-5,
        discriminator_beta_1=0.5,
        discriminator_accuracy_threshold=0.8,
    ),
    # Chosen by measurement (README "Results"): the chapter's networks and G optimizer, with D's learning rate
    # raised tenfold to 1e-4, Adam β1 0.5 for D as in the paper, and one-sided label smoothing (real label 0.9).
    "better": dict(
        batch_size=32,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-4,
        discriminator_beta_1=0.5,
        discriminator_accuracy_threshold=None,
        real_label=0.9,
    ),
}


def _one_of(choices) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@dataclass
class Config:
    """Everything that defines a run.

    Data:
        data_dir: a `volumetric_data` folder, a folder above it, or a `.zip` holding it. `None` uses
            `$THREEDGAN_DATA`, then downloads the chapter's archive into Keras' cache.
        categories: 3DShapeNets category names, or `["all"]`.
        split: `"train"` or `"test"`.
        rotations: `"all"` (the 12 rotations `_1` … `_12`, the chapter's default) or `"canonical"` (`_1` only).
        obj_ratio: fraction of each category's sorted file list to keep (the chapter's `obj_ratio`).
        max_samples: keep at most this many volumes after `obj_ratio` (smoke runs); `None` keeps all.
        cache_dir: where parsed data is cached; `None` means `~/.cache/threedgan`.

    Networks:
        z_size: latent dimension (200 in the chapter and the paper).
        z_stddev: the latent prior is N(0, z_stddev²), in training and at generation.
        cube_length: volume side; the chapter's networks produce 64³.
        data_format: the networks' internal tensor layout: `"auto"` (chosen per backend and device by measurement,
            see `threedgan.models.resolve_data_format`), `"channels_last"` or `"channels_first"`. Inputs, outputs
            and weight files are the same in either layout, so it is a speed setting, not part of the model.
        deconvolution: how the generator's stride-2 transposed convolutions are computed: `"auto"` (by backend, see
            `threedgan.models.resolve_deconvolution`), `"transposed"` (Keras' `Conv3DTranspose`) or `"subpixel"`
            (the same layer and weights as a sub-pixel convolution). Also a speed setting only.

    Recipe:
        preset: the preset this config started from (`book`, `paper` or `better`), kept for the record.
        batch_size, epochs: as usual. Volumes are reshuffled every epoch.
        generator_learning_rate, generator_beta_1, discriminator_learning_rate, discriminator_beta_1: Adam.
        discriminator_accuracy_threshold: the paper's rule: D is updated only when its accuracy on the previous batch
            (real and generated) was at most this; `None` always updates D (the chapter).
        real_label: D's target for real volumes; below 1 is one-sided label smoothing (Salimans et al. 2016).
        seed: seeds shuffling, latents and weight initialisation.
        mixed_precision: `"auto"` (bfloat16 on a GPU, float32 elsewhere), `"bfloat16"` or `"float32"`.
        max_steps: stop after this many iterations in all (`None`: run all epochs).
        time_budget_minutes: stop after this much training time, saving as at a normal end (`None`: no limit).
        devices: data-parallel training over this many devices (JAX backend, `keras.distribution.DataParallel`);
            `None` or 1 trains on one device. `batch_size` stays the global batch and must split evenly over the
            devices; BatchNorm is synchronised (global-batch statistics), so the model trained is the one-device one
            (see `threedgan.distributed`).

    Outputs:
        output_dir: weights, `config.json` and checkpoints (the chapter's `generated_volumes/`).
        logdir: TensorBoard logs go to `<logdir>/<run_name>/`.
        run_name: `None` makes one from the category and the time.
        image_every_steps: interval between rendered sample images in TensorBoard.
        images_per_log: how many samples each logged image shows.
        checkpoint_every_steps: interval between checkpoints (`0` disables them).
        keep_checkpoints: how many recent checkpoints to keep.
    """

    data_dir: Optional[str] = None
    categories: list = field(default_factory=lambda: ["chair"])
    split: str = "train"
    rotations: str = "all"
    obj_ratio: float = 1.0
    max_samples: Optional[int] = None
    cache_dir: Optional[str] = None

    z_size: int = 200
    z_stddev: float = 0.33
    cube_length: int = 64
    data_format: str = "auto"
    deconvolution: str = "auto"

    preset: str = "book"
    batch_size: int = 32
    epochs: int = 100
    generator_learning_rate: float = 0.0025
    generator_beta_1: float = 0.5
    discriminator_learning_rate: float = 1e-5
    discriminator_beta_1: float = 0.9
    discriminator_accuracy_threshold: Optional[float] = None
    real_label: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    max_steps: Optional[int] = None
    time_budget_minutes: Optional[float] = None
    devices: Optional[int] = None

    output_dir: str = "generated_volumes"
    logdir: str = "logs"
    run_name: Optional[str] = None
    image_every_steps: int = 100
    images_per_log: int = 4
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_preset(cls, preset: str = "book", **overrides) -> "Config":
        """Builds a config from a named preset, then applies overrides.

        Args:
            preset: one of `PRESETS`.
            **overrides: any `Config` field; `None` values are ignored so that unset command-line flags keep the
                preset's value.

        Returns:
            A validated `Config`.

        Raises:
            ConfigError: unknown preset or field, or an invalid value.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = dict(PRESETS[preset], preset=preset)
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown config field {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    def validate(self) -> None:
        """Raises `ConfigError` naming the first invalid field."""
        if isinstance(self.categories, str):
            self.categories = [self.categories]
        checks = [
            ("split", self.split in ("train", "test"), "must be 'train' or 'test'"),
            ("rotations", self.rotations in ("all", "canonical"), "must be 'all' or 'canonical'"),
            ("obj_ratio", 0.0 < self.obj_ratio <= 1.0, "must be in (0, 1]"),
            ("max_samples", self.max_samples is None or self.max_samples >= 1, "must be at least 1"),
            ("categories", bool(self.categories), "must name at least one category"),
            ("z_size", self.z_size >= 1, "must be at least 1"),
            ("z_stddev", self.z_stddev > 0, "must be positive"),
            ("cube_length", self.cube_length == 64, "must be 64 (the chapter's networks)"),
            ("data_format", self.data_format in DATA_FORMAT_CHOICES, "must be " + _one_of(DATA_FORMAT_CHOICES)),
            ("deconvolution", self.deconvolution in DECONVOLUTION_CHOICES, "must be " + _one_of(DECONVOLUTION_CHOICES)),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("generator_learning_rate", self.generator_learning_rate > 0, "must be positive"),
            ("discriminator_learning_rate", self.discriminator_learning_rate > 0, "must be positive"),
            ("generator_beta_1", 0 <= self.generator_beta_1 < 1, "must be in [0, 1)"),
            ("discriminator_beta_1", 0 <= self.discriminator_beta_1 < 1, "must be in [0, 1)"),
            (
                "discriminator_accuracy_threshold",
                self.discriminator_accuracy_threshold is None or 0 < self.discriminator_accuracy_threshold <= 1,
                "must be in (0, 1] or null",
            ),
            ("real_label", 0.5 < self.real_label <= 1.0, "must be in (0.5, 1]"),
            ("mixed_precision", self.mixed_precision in ("auto", "bfloat16", "float32"), "must be auto, bfloat16 or float32"),
            ("image_every_steps", self.image_every_steps >= 0, "must be 0 (off) or positive"),
            ("images_per_log", self.images_per_log >= 1, "must be at least 1"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0, "must be 0 (off) or positive"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "must be at least 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be at least 1 or null"),
            ("time_budget_minutes", self.time_budget_minutes is None or self.time_budget_minutes > 0, "must be positive or null"),
            ("devices", self.devices is None or self.devices >= 1, "must be at least 1 or null"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"config field {name} = {getattr(self, name)!r} {message}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, directory: str, filename: str = CONFIG_FILENAME) -> str:
        """Writes the config as JSON (`config.json` unless `filename` says otherwise) into `directory`, created if
        needed, atomically, and returns its path; `Config.load` reads it back."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, filename)
        temporary = path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str) -> "Config":
        """Reads a config from a `config.json` file, or from the folder holding one.

        Raises:
            ConfigError: the file is missing, not JSON, or holds unknown or invalid fields.
        """
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_FILENAME)
        try:
            with open(path) as handle:
                values = json.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"config file {path} has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)
