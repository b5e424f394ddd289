"""One typed configuration for a run: data, networks, training recipe and outputs.

Every hyper-parameter lives here once. Scripts build a `Config` from a preset plus command-line overrides, the
training loop saves it as `config.json` beside the weights, and `generate`/`evaluate` rebuild the networks and the
latent prior from that file, so training and generation can never disagree (the book samples N(0, 0.33) in training
but N(0, 1) at generation).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from threedgan.errors import ConfigError

CONFIG_FILENAME = "config.json"
# Speed settings (see `threedgan.models`): "auto" is resolved per backend by `resolve_data_format` /
# `resolve_deconvolution`.
DATA_FORMAT_CHOICES = ("auto", "channels_last", "channels_first")
DECONVOLUTION_CHOICES = ("auto", "transposed", "subpixel")
DISCRIMINATOR_CONVOLUTION_CHOICES = ("auto", "plain", "space_to_depth")  # `resolve_discriminator_convolution`
# Fields of older config files under their current names.
RENAMED_FIELDS = {"first_convolution": "discriminator_convolution"}

# The recipes. `book` is the chapter's (Packt, chapter 2) and `paper` the authors' (Wu et al. 2016, section 4), each
# exactly; `better` keeps the chapter's loop and changes only its optimizers and labels. `r1-ema`, the default, keeps
# the chapter's networks and data but trains them with the non-saturating logistic loss in one D update, a lazy R1
# penalty on D (Mescheder et al. 2018) and an exponential moving average of G (StyleGAN2's recipe); README "Presets"
# has the measurements that chose it. Each preset names every recipe field.
_CHAPTER_LOOP = dict(loss="chapter", r1_gamma=0.0, r1_interval=4, ema_decay=0.0, generator_beta_2=0.999,
                     discriminator_beta_2=0.999, real_label=1.0, discriminator_accuracy_threshold=None)
PRESETS = {
    "r1-ema": dict(
        batch_size=32,
        loss="logistic",
        generator_learning_rate=2e-4,
        generator_beta_1=0.5,
        generator_beta_2=0.99,
        discriminator_learning_rate=2e-4,
        discriminator_beta_1=0.5,
        discriminator_beta_2=0.99,
        discriminator_accuracy_threshold=None,
        real_label=1.0,
        r1_gamma=10.0,
        r1_interval=4,
        ema_decay=0.999,
    ),
    "book": dict(
        _CHAPTER_LOOP,
        batch_size=32,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-5,
        discriminator_beta_1=0.9,
    ),
    "paper": dict(
        _CHAPTER_LOOP,
        batch_size=100,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-5,
        discriminator_beta_1=0.5,
        discriminator_accuracy_threshold=0.8,
    ),
    # The chapter's networks and G optimizer, with D's learning rate raised tenfold to 1e-4, Adam β1 0.5 for D as in
    # the paper, and one-sided label smoothing (real label 0.9).
    "better": dict(
        _CHAPTER_LOOP,
        batch_size=32,
        generator_learning_rate=0.0025,
        generator_beta_1=0.5,
        discriminator_learning_rate=1e-4,
        discriminator_beta_1=0.5,
        real_label=0.9,
    ),
}
DEFAULT_PRESET = "r1-ema"
LOSS_CHOICES = ("chapter", "logistic")
_DEFAULT = PRESETS[DEFAULT_PRESET]


def _one_of(choices) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


# Upper bounds: far above any real run, low enough that a typo (or a hostile config.json) fails at once instead of
# after an hour of allocation. Seeds must leave room for `seed + 1` (the image latents) in NumPy's 32-bit range.
LIMITS = {
    "batch_size": 4096,
    "z_size": 4096,
    "epochs": 1_000_000,
    "max_samples": 1_000_000_000,
    "max_steps": 1_000_000_000,
    "image_every_steps": 1_000_000_000,
    "checkpoint_every_steps": 1_000_000_000,
    "images_per_log": 64,
    "keep_checkpoints": 1000,
    "devices": 1024,
    "r1_interval": 1_000_000,
    "seed": 2**32 - 2,
    "generator_learning_rate": 1.0,
    "discriminator_learning_rate": 1.0,
    "z_stddev": 100.0,
    "r1_gamma": 1e6,
    "time_budget_minutes": 1e7,
}


def _type_problem(annotation: str, value) -> Optional[str]:
    """What is wrong with `value` for a field annotated `annotation` (a string under postponed annotations), or
    `None`. JSON gives ints where floats are meant, which is fine; a bool is not a number, a string is not a number,
    NaN and infinity are not values, and `null` only goes where the field is Optional."""
    annotation = str(annotation).replace("typing.", "").strip()
    if annotation.startswith("Optional[") and annotation.endswith("]"):
        if value is None:
            return None
        annotation = annotation[len("Optional[") : -1]
    elif value is None:
        return "must not be null"
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
    elif annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    elif annotation == "str":
        if not isinstance(value, str):
            return "must be a string"
    elif annotation == "bool":
        if not isinstance(value, bool):
            return "must be true or false"
    elif annotation in ("list", "List[str]"):
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            return "must be a list of names"
    return None


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
        mesh_margin, mesh_aspect, mesh_up_axis: for a folder of meshes / `.binvox` files (`threedgan.mesh_data`):
            empty voxels around each shape in the 30³ grid (3DShapeNets: 3), `"keep"` its proportions or
            `"stretch"` each axis, and `"z"` or `"y"` as the shapes' up axis.
        skip_bad: leave out shape files that cannot be voxelised (counted in a warning) instead of stopping.

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
        discriminator_convolution: how the discriminator's stride-2 convolutions (blocks 1–4) are computed: `"auto"`
            (by backend, see `threedgan.models.resolve_discriminator_convolution`), `"plain"` (Keras' `Conv3D`) or
            `"space_to_depth"` (the same layers and weights on the space-to-depth rearranged input). Also a speed
            setting only. Config files written before it covered blocks 2–4 call it `first_convolution`; they load.

    Recipe (see `threedgan.training_step`):
        preset: the preset this config started from (one of `PRESETS`), kept for the record.
        batch_size, epochs: as usual. Volumes are reshuffled every epoch.
        loss: `"logistic"`: the non-saturating logistic loss, one D update on real and generated volumes together;
            `"chapter"`: the book's iteration, a D update on real volumes (label `real_label`), then one on generated
            volumes (label 0), each with cross-entropy. G's loss is the non-saturating one in both.
        generator_learning_rate, generator_beta_1, generator_beta_2, discriminator_learning_rate,
            discriminator_beta_1, discriminator_beta_2: Adam.
        discriminator_accuracy_threshold: the paper's rule: D is updated only when its accuracy on the previous batch
            (real and generated) was at most this; `None` always updates D (the chapter).
        real_label: D's target for real volumes in the chapter's loss; below 1 is one-sided label smoothing
            (Salimans et al. 2016).
        r1_gamma: weight γ of the R1 penalty γ/2·E‖∇D(x)‖² on real volumes (Mescheder et al. 2018); 0 turns it off.
        r1_interval: the penalty is computed every this many iterations and scaled by it (lazy regularisation).
        ema_decay: G's weights are averaged with this decay per iteration (a half-life of ln 0.5 / ln decay
            iterations: 693 at 0.999); the average is the generator saved. 0 keeps no average.
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
        mesh_every_steps: interval between sample meshes in TensorBoard's MESH tab (the first `images_per_log`
            shapes of the images' latents, meshed at 32³; `0` turns them off).
        metrics_every_steps: interval between shape metrics of `metrics_samples` fixed latents in TensorBoard and
            `<output_dir>/metrics.jsonl`: occupancy and mean pairwise IoU, the collapse detector (`0`: off).
        set_metrics_every_steps: interval between MMD, COV and 1-NNA (IoU) of those samples against a fixed slice
            of `metrics_references` training volumes (`0`: off). See `threedgan.monitor`.
        metrics_samples, metrics_references: the sizes of those two sets.
        checkpoint_every_steps: interval between checkpoints (`0` disables them).
        checkpoint_every_minutes: also write a checkpoint when this much time has passed since the last one (the
            first after at most a minute, so a run killed early resumes); `0` turns the clock off. Checkpoints are
            off altogether only with both intervals 0.
        keep_checkpoints: how many recent checkpoints to keep.
    """

    data_dir: Optional[str] = None
    categories: list = field(default_factory=lambda: ["chair"])
    split: str = "train"
    rotations: str = "all"
    obj_ratio: float = 1.0
    max_samples: Optional[int] = None
    cache_dir: Optional[str] = None
    mesh_margin: float = 3.0
    mesh_aspect: str = "keep"
    mesh_up_axis: str = "z"
    skip_bad: bool = False

    z_size: int = 200
    z_stddev: float = 0.33
    cube_length: int = 64
    data_format: str = "auto"
    deconvolution: str = "auto"
    discriminator_convolution: str = "auto"

    preset: str = DEFAULT_PRESET
    batch_size: int = _DEFAULT["batch_size"]
    epochs: int = 100
    loss: str = _DEFAULT["loss"]
    generator_learning_rate: float = _DEFAULT["generator_learning_rate"]
    generator_beta_1: float = _DEFAULT["generator_beta_1"]
    generator_beta_2: float = _DEFAULT["generator_beta_2"]
    discriminator_learning_rate: float = _DEFAULT["discriminator_learning_rate"]
    discriminator_beta_1: float = _DEFAULT["discriminator_beta_1"]
    discriminator_beta_2: float = _DEFAULT["discriminator_beta_2"]
    discriminator_accuracy_threshold: Optional[float] = _DEFAULT["discriminator_accuracy_threshold"]
    real_label: float = _DEFAULT["real_label"]
    r1_gamma: float = _DEFAULT["r1_gamma"]
    r1_interval: int = _DEFAULT["r1_interval"]
    ema_decay: float = _DEFAULT["ema_decay"]
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
    mesh_every_steps: int = 500
    metrics_every_steps: int = 200
    set_metrics_every_steps: int = 1000
    metrics_samples: int = 64
    metrics_references: int = 64
    checkpoint_every_steps: int = 5000
    checkpoint_every_minutes: float = 10.0
    keep_checkpoints: int = 3

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides) -> "Config":
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
        """Raises `ConfigError` naming the first invalid field: of the wrong type (a string or a bool where a number
        goes, `null` where the field is not optional, NaN or infinity), above its bound in `LIMITS`, or invalid."""
        if isinstance(self.categories, str):
            self.categories = [self.categories]
        # Types first, so that the value checks below compare numbers with numbers (config.json, --config and
        # tune's trials all come through here).
        for config_field in dataclasses.fields(self):
            value = getattr(self, config_field.name)
            if type(value).__module__ == "numpy" and hasattr(value, "item"):
                # A NumPy scalar from code (Hyperopt's suggestions, say) becomes the Python value JSON can write.
                value = value.item()
                setattr(self, config_field.name, value)
            problem = _type_problem(config_field.type, value)
            if problem is None and config_field.name in LIMITS and value is not None and value > LIMITS[config_field.name]:
                problem = f"must be at most {LIMITS[config_field.name]}"
            if problem is not None:
                raise ConfigError(f"config field {config_field.name} = {value!r} {problem}")
        if self.seed < 0:
            raise ConfigError(f"config field seed = {self.seed!r} must be 0 or more")
        for name in ("output_dir", "logdir"):
            if not getattr(self, name).strip():
                raise ConfigError(f"config field {name} must not be empty")
        checks = [
            ("split", self.split in ("train", "test"), "must be 'train' or 'test'"),
            ("rotations", self.rotations in ("all", "canonical"), "must be 'all' or 'canonical'"),
            ("obj_ratio", 0.0 < self.obj_ratio <= 1.0, "must be in (0, 1]"),
            ("max_samples", self.max_samples is None or self.max_samples >= 1, "must be at least 1"),
            ("mesh_margin", isinstance(self.mesh_margin, (int, float)) and 0 <= self.mesh_margin < 14.5, "must be in [0, 14.5) voxels"),
            ("mesh_aspect", self.mesh_aspect in ("keep", "stretch"), "must be 'keep' or 'stretch'"),
            ("mesh_up_axis", self.mesh_up_axis in ("z", "y"), "must be 'z' or 'y'"),
            ("categories", bool(self.categories), "must name at least one category"),
            ("z_size", self.z_size >= 1, "must be at least 1"),
            ("z_stddev", self.z_stddev > 0, "must be positive"),
            ("cube_length", self.cube_length == 64, "must be 64 (the chapter's networks)"),
            ("data_format", self.data_format in DATA_FORMAT_CHOICES, "must be " + _one_of(DATA_FORMAT_CHOICES)),
            ("deconvolution", self.deconvolution in DECONVOLUTION_CHOICES, "must be " + _one_of(DECONVOLUTION_CHOICES)),
            (
                "discriminator_convolution",
                self.discriminator_convolution in DISCRIMINATOR_CONVOLUTION_CHOICES,
                "must be " + _one_of(DISCRIMINATOR_CONVOLUTION_CHOICES),
            ),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("generator_learning_rate", self.generator_learning_rate > 0, "must be positive"),
            ("discriminator_learning_rate", self.discriminator_learning_rate > 0, "must be positive"),
            ("generator_beta_1", 0 <= self.generator_beta_1 < 1, "must be in [0, 1)"),
            ("discriminator_beta_1", 0 <= self.discriminator_beta_1 < 1, "must be in [0, 1)"),
            ("generator_beta_2", 0 <= self.generator_beta_2 < 1, "must be in [0, 1)"),
            ("discriminator_beta_2", 0 <= self.discriminator_beta_2 < 1, "must be in [0, 1)"),
            ("loss", self.loss in LOSS_CHOICES, "must be " + _one_of(LOSS_CHOICES)),
            ("r1_gamma", self.r1_gamma >= 0, "must be 0 (off) or positive"),
            ("r1_interval", self.r1_interval >= 1, "must be at least 1"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1) (0: no average)"),
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
            ("checkpoint_every_minutes", 0 <= self.checkpoint_every_minutes <= 1e7, "must be 0 (off) or positive"),
            ("mesh_every_steps", 0 <= self.mesh_every_steps <= 1_000_000_000, "must be 0 (off) or positive"),
            ("metrics_every_steps", 0 <= self.metrics_every_steps <= 1_000_000_000, "must be 0 (off) or positive"),
            ("set_metrics_every_steps", 0 <= self.set_metrics_every_steps <= 1_000_000_000, "must be 0 (off) or positive"),
            ("metrics_samples", 2 <= self.metrics_samples <= 4096, "must be in [2, 4096]"),
            ("metrics_references", 1 <= self.metrics_references <= 4096, "must be in [1, 4096]"),
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
        from threedgan.safe_io import MIB, read_regular_file

        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            # A regular file of at most 1 MiB (a config is about 2 KB): never a FIFO, a device or a symlink to one.
            values = json.loads(read_regular_file(path, MIB, ConfigError, what="config file").decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        values = {RENAMED_FIELDS.get(key, key): value for key, value in values.items()}
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
