"""Command lines: parse arguments, build one `Config`, call the package. The scripts in `scripts/` call these.

A user's mistake (bad path, bad data, bad value) prints one line `error: ...` to stderr and exits with status 2; a
traceback is shown only with `--debug`.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import math
import os
import shutil
import stat
import sys

from threedgan.config import (
    DATA_FORMAT_CHOICES,
    DECONVOLUTION_CHOICES,
    DEFAULT_PRESET,
    DISCRIMINATOR_CONVOLUTION_CHOICES,
    LOSS_CHOICES,
    PRESETS,
)
from threedgan.errors import ThreedganError

EXIT_USER_ERROR = 2
# Bounds of command-line numbers that no config holds: shapes generated in one call (each is 1 MiB as float32 while
# it is written), PNG sides, and seeds (NumPy's generators take 0 to 2³² - 1 here).
MAX_GENERATED = 4096
MAX_IMAGE_SIZE = 4096
MAX_SEED = 2**32 - 1


def _setup_logging(debug: bool, import_backends: bool = True) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # TensorFlow and absl log a page of start-up chatter (CUDA probes, the oneDNN banner); keep the terminal for
    # what the user asked for, unless --debug. Before anything imports TensorFlow; the user's own settings win.
    from threedgan.quiet import quiet_startup

    quiet_startup(debug, import_backends)


def user_errors_to_exit_code(main):
    """Wraps `main(argv) -> int` so that `ThreedganError`s become one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in argv
        _setup_logging(debug, import_backends=not {"-h", "--help"} & set(argv))
        try:
            return main(argv)
        except (ThreedganError, OSError, MemoryError) as error:
            # OSError: whatever the system refuses (a full disk, a read-only file system, a name too long, a file
            # where a folder goes) is the user's to fix, not a bug: one line naming the path and the reason.
            if debug:
                raise
            print(f"error: {error_line(error)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt as interruption:
            # Training's own interruption says which checkpoint it wrote and carries 128 + the signal's number.
            print(str(interruption) or "interrupted", file=sys.stderr)
            return getattr(interruption, "exit_status", 130)

    return wrapper


def error_line(error: BaseException) -> str:
    """The one line `error: ...` shows: an `OSError` as `<path>: <reason>`, anything else as its first line."""
    if isinstance(error, MemoryError):
        return "out of memory (the input asks for more than this machine has; use smaller sizes or fewer samples)"
    if isinstance(error, OSError) and not isinstance(error, ThreedganError):
        reason = error.strerror or (str(error).splitlines() or [""])[0] or type(error).__name__
        if error.filename is not None:
            where = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes)) else str(error.filename)
            if error.filename2 is not None:
                where += f" -> {os.fsdecode(error.filename2) if isinstance(error.filename2, (str, bytes)) else error.filename2}"
            return f"{where}: {reason}"
        return reason
    text = str(error)
    return text.splitlines()[0] if text.strip() else type(error).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line `error: ...` and exit status 2 (argparse prints its whole usage first)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def check_output_folder(path: str, what: str) -> str:
    """Checks, creating nothing, that `path` is a writable folder or can be created as one; returns the deepest
    folder of it that exists (where the new ones would go).

    Raises:
        ConfigError: a file is in the way (the path itself or a folder above it), a name is longer than the file
            system allows, or the folder that exists is not writable (permissions, a read-only file system).
    """
    from threedgan.errors import ConfigError

    if not str(path).strip():
        raise ConfigError(f"{what} is empty")
    target = os.path.abspath(path)
    current, missing = target, []
    while True:
        try:
            status = os.stat(current)
            break
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise ConfigError(f"{what} {path}: {error.strerror or error}") from None
        missing.append(os.path.basename(current))
        parent = os.path.dirname(current)
        if parent == current:
            raise ConfigError(f"{what} {path}: no part of it exists")
        current = parent
    if not stat.S_ISDIR(status.st_mode):
        if current == target:
            raise ConfigError(f"{what} {path} is a file, not a folder; pass a folder")
        raise ConfigError(f"{what} {path} cannot be created: {current} is a file, not a folder")
    try:
        name_max = os.pathconf(current, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise ConfigError(
                f"{what} {path}: the name {name[:24]}... is {len(os.fsencode(name))} bytes long; the file system "
                f"allows {name_max}"
            )
    if not os.access(current, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(current).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        reason = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        where = path if current == target else f"{path} cannot be created: {current}"
        raise ConfigError(f"{what} {where} {reason}")
    return current


def estimated_checkpoint_bytes(config) -> int:
    """About how large one checkpoint of `config`'s networks is: G (twice with its average), D, and Adam's two
    moments of each, in float32. The chapter's networks: about 300 MB (390 MB with the average)."""
    z = config.z_size
    generator = 512 * 64 * z + 512 + 512 * 256 * 64 + 256 + 256 * 128 * 64 + 128 + 128 * 64 * 64 + 64 + 64 * 64 + 1
    generator += 4 * (512 + 256 + 128 + 64)
    discriminator = 64 * 64 + 64 + 64 * 128 * 64 + 128 + 128 * 256 * 64 + 256 + 256 * 512 * 64 + 512 + 512 * 64 + 1
    discriminator += 4 * (128 + 256 + 512)
    copies = 3 * (generator + discriminator) + (generator if config.ema_decay > 0 else 0)
    return 4 * copies


def preflight_training(config) -> None:
    """Checks, before any data is read or step trained, every place training will write: the output folder, its
    `checkpoints` folder and final files, and the TensorBoard folder. Warns when the disk holding the output folder
    has less free space than two checkpoints.

    Raises:
        ConfigError: see `check_output_folder`; a file where the checkpoints folder goes, or a folder where a
            weights file or config.json goes.
    """
    from threedgan.checkpoint import CHECKPOINT_FOLDER
    from threedgan.config import CONFIG_FILENAME
    from threedgan.errors import ConfigError
    from threedgan.run_set import DISCRIMINATOR_FILENAME, GENERATOR_FILENAME

    existing = check_output_folder(config.output_dir, "--output-dir")
    checkpoints = os.path.join(config.output_dir, CHECKPOINT_FOLDER)
    if os.path.lexists(checkpoints):
        check_output_folder(checkpoints, "the checkpoints folder")
    for name in (GENERATOR_FILENAME, DISCRIMINATOR_FILENAME, CONFIG_FILENAME):
        if os.path.isdir(os.path.join(config.output_dir, name)):
            raise ConfigError(f"--output-dir {config.output_dir} holds a folder named {name}, where training writes that file")
    check_output_folder(config.logdir, "--logdir")
    if config.run_name:
        check_output_folder(os.path.join(config.logdir, config.run_name), "--run-name's folder")
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    needed = 2 * estimated_checkpoint_bytes(config)
    if config.checkpoint_every_steps and free < needed:
        logging.getLogger("threedgan").warning(
            "only %.0f MB free on the disk of %s; one checkpoint takes about %.0f MB and a new one is written before "
            "the old is deleted: free some space or pass --checkpoint-every-steps 0",
            free / 1e6, config.output_dir, needed / 2e6,
        )


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bounded_int(low, high):
    """An argparse type: an integer in [low, high]."""

    def parse(text):
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def probability(text):
    """An argparse type for occupancy thresholds: a finite number strictly between 0 and 1."""
    value = float(text)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text}")
    return value


def finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {value}")
    return value


def _view_list(text):
    from threedgan.render import VIEWS

    views = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in views if name not in VIEWS]
    if unknown or not views:
        raise argparse.ArgumentTypeError(f"unknown view {unknown[0] if unknown else text!r}; choose from {', '.join(VIEWS)}")
    return views


def train_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="threedgan-train",
        description="Train the chapter's 3D-GAN on 3DShapeNets volumes. Unset flags keep the preset's value.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--category", nargs="+", dest="categories", metavar="NAME", help="categories, or 'all' (default chair)")
    data.add_argument(
        "--data-dir",
        help="volumetric_data folder, a folder above it, the zip, a packed .npz, or a folder of your own meshes "
        "(.obj .off .stl .ply .glb) and .binvox files, one subfolder per category (default $THREEDGAN_DATA, else download)",
    )
    data.add_argument("--split", choices=["train", "test"])
    data.add_argument("--rotations", choices=["all", "canonical"], help="all 12 rotations (default) or _1 only")
    data.add_argument("--obj-ratio", type=_positive_float, help="fraction of each category's files (default 1.0)")
    data.add_argument("--max-samples", type=_positive_int, help="use at most N volumes (smoke runs)")
    data.add_argument("--cache-dir", help="where parsed data is cached (default ~/.cache/threedgan)")
    data.add_argument("--mesh-margin", type=float, help="meshes: empty voxels around each shape in the 30³ grid (default 3, as 3DShapeNets)")
    data.add_argument("--mesh-aspect", choices=["keep", "stretch"], help="meshes: keep proportions (default) or stretch each axis")
    data.add_argument("--mesh-up-axis", choices=["z", "y"], help="meshes: the shapes' up axis (default z; y for ShapeNet, glTF)")
    data.add_argument(
        "--skip-bad", action="store_true", default=None, help="meshes: leave out files that cannot be voxelised, with a count"
    )
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--config", dest="config_file", help="start from this config.json instead of a preset")
    recipe.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help=f"training recipe (default {DEFAULT_PRESET}: the chapter's networks with the logistic loss, R1 and G's "
        "average; book and paper: the chapter's and the paper's values exactly)",
    )
    recipe.add_argument("--epochs", type=_positive_int, help="default 100")
    recipe.add_argument("--batch-size", type=_positive_int)
    recipe.add_argument("--generator-learning-rate", "--g-lr", type=_positive_float)
    recipe.add_argument("--discriminator-learning-rate", "--d-lr", type=_positive_float)
    recipe.add_argument("--generator-beta-1", type=float)
    recipe.add_argument("--generator-beta-2", type=float)
    recipe.add_argument("--discriminator-beta-1", type=float)
    recipe.add_argument("--discriminator-beta-2", type=float)
    recipe.add_argument("--loss", choices=LOSS_CHOICES, help="logistic: one D update on real+generated; chapter: the book's two")
    recipe.add_argument("--r1-gamma", type=float, help="R1 penalty weight on real volumes (0: off)")
    recipe.add_argument("--r1-interval", type=_positive_int, help="add R1 every N iterations, scaled by N")
    recipe.add_argument("--ema-decay", type=float, help="G's weight average decay per iteration (0: no average)")
    recipe.add_argument(
        "--discriminator-accuracy-threshold", type=float, help="update D only when its last accuracy <= this (paper: 0.8)"
    )
    recipe.add_argument("--real-label", type=float, help="D's target for real volumes (<1: one-sided label smoothing)")
    recipe.add_argument("--z-stddev", type=_positive_float, help="latent prior N(0, s^2) (default 0.33)")
    recipe.add_argument("--seed", type=int)
    recipe.add_argument("--max-steps", type=_positive_int, help="stop after N iterations in all")
    recipe.add_argument("--time-budget-minutes", type=_positive_float, help="stop after this much training time")
    recipe.add_argument("--precision", dest="mixed_precision", choices=["auto", "bfloat16", "float32"])
    recipe.add_argument(
        "--data-format",
        choices=DATA_FORMAT_CHOICES,
        help="the networks' internal layout, a speed setting (default auto: measured per backend)",
    )
    recipe.add_argument(
        "--deconvolution",
        choices=DECONVOLUTION_CHOICES,
        help="how G's stride-2 transposed convolutions are computed, a speed setting (default auto: subpixel on jax)",
    )
    recipe.add_argument(
        "--discriminator-convolution",
        choices=DISCRIMINATOR_CONVOLUTION_CHOICES,
        help="how D's stride-2 convolutions are computed, a speed setting (default auto: space_to_depth on jax)",
    )
    recipe.add_argument(
        "--devices",
        type=_positive_int,
        metavar="N",
        help="data-parallel training over N devices (jax or tensorflow backend); --batch-size is the global batch, split evenly",
    )
    output = parser.add_argument_group("outputs")
    output.add_argument("--output-dir", help="weights, config.json and checkpoints (default generated_volumes)")
    output.add_argument("--logdir", help="TensorBoard root (default logs)")
    output.add_argument("--run-name", help="TensorBoard run folder name (default <category>-<time>)")
    output.add_argument("--image-every-steps", type=_non_negative_int, help="sample renders interval (0: off)")
    output.add_argument(
        "--mesh-every-steps", type=_non_negative_int, help="sample meshes for TensorBoard's MESH tab, interval (0: off)"
    )
    output.add_argument(
        "--metrics-every-steps",
        type=_non_negative_int,
        help="occupancy and mean pairwise IoU (collapse) of fixed samples to TensorBoard and metrics.jsonl, interval (0: off)",
    )
    output.add_argument(
        "--set-metrics-every-steps",
        type=_non_negative_int,
        help="MMD / COV / 1-NNA (IoU) of those samples against a slice of the training volumes, interval (0: off)",
    )
    output.add_argument("--metrics-samples", type=_positive_int, help="fixed latents the metrics generate")
    output.add_argument("--metrics-references", type=_positive_int, help="training volumes the set metrics compare with")
    output.add_argument("--checkpoint-every-steps", type=_non_negative_int, help="checkpoint interval (0: off)")
    output.add_argument(
        "--checkpoint-every-minutes",
        type=_non_negative_float,
        help="also checkpoint when this much time passed since the last one; the first after at most 1 minute (0: off)",
    )
    output.add_argument("--keep-checkpoints", type=_positive_int)
    resuming = output.add_mutually_exclusive_group()
    resuming.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const="require",
        default="auto",
        help="continue from the newest checkpoint in --output-dir, failing if there is none "
        "(without either flag a checkpoint there is used if present)",
    )
    resuming.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const="never",
        help="start from scratch; earlier checkpoints are moved to <output-dir>/checkpoints-replaced-<time>",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the backends' start-up messages")
    _show_config_defaults(parser)
    return parser


def _show_config_defaults(parser: argparse.ArgumentParser) -> None:
    """Adds `(default …)` to every flag of a `Config` field whose help does not name its default yet: the value of
    the default preset, since unset flags keep the preset's (or --config's) value."""
    from threedgan.config import PRESETS, Config

    defaults = Config.from_preset(DEFAULT_PRESET).to_dict()
    for action in parser._actions:
        if action.dest not in defaults or action.help == argparse.SUPPRESS:
            continue
        help_text = action.help or ""
        if "default" in help_text:
            continue
        value = defaults[action.dest]
        shown = ",".join(value) if isinstance(value, list) else "none" if value is None else str(value)
        note = f" in {DEFAULT_PRESET}" if any(action.dest in values for values in PRESETS.values()) else ""
        help_text = f"{help_text} (default {shown}{note})" if help_text else f"default {shown}{note}"
        action.help = help_text.replace("%", "%%")


def config_from_train_arguments(arguments: argparse.Namespace):
    """The run's `Config`: a preset (or a saved config file), then every flag the user set."""
    from threedgan.config import Config
    from threedgan.errors import ConfigError

    overrides = {
        name: value
        for name, value in vars(arguments).items()
        if name not in ("config_file", "preset", "debug", "resume") and value is not None
    }
    if arguments.config_file:
        if arguments.preset:
            raise ConfigError("pass either --config or --preset, not both")
        return Config(**dict(Config.load(arguments.config_file).to_dict(), **overrides))
    return Config.from_preset(arguments.preset or DEFAULT_PRESET, **overrides)


@user_errors_to_exit_code
def train_main(argv=None) -> int:
    """`threedgan-train` / `scripts/train.py`."""
    arguments = train_parser().parse_args(argv)
    config = config_from_train_arguments(arguments)
    # Before any data is parsed or a step trained: a folder that cannot be written fails now, not after the work.
    preflight_training(config)
    from threedgan.train import train

    try:
        metrics = train(config, resume=arguments.resume)
    except OSError as error:
        if error.filename is None and not isinstance(error, ThreedganError):
            # h5py and json writes report no path: name the folder they were writing into.
            raise OSError(error.errno, f"{error.strerror or error} (writing training outputs)", config.output_dir) from error
        raise
    summary = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name in ("g_loss", "d_loss", "d_accuracy"))
    print(f"done: {summary}; weights in {config.output_dir}")
    return 0


def generate_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="threedgan-generate",
        description="Generate volumes, renders and meshes from trained weights (the latent prior comes from the run's config.json).",
    )
    parser.add_argument("--weights", required=True, help="generator_weights.h5 (config.json is read from the same folder)")
    parser.add_argument("--config", dest="config_file", help="config.json, if it is not beside the weights")
    parser.add_argument("--num", type=bounded_int(1, MAX_GENERATED), default=8, help=f"how many shapes (default 8, at most {MAX_GENERATED})")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="same seed, same shapes, same files (default 0)")
    parser.add_argument("--output-dir", default="results", help="where files go (default results)")
    parser.add_argument("--threshold", type=probability, default=0.5, help="occupancy threshold for renders and meshes, in (0, 1)")
    parser.add_argument(
        "--format",
        default="npy,png",
        help="comma-separated: npy, mat, png, stl, obj, ply, npz (all samples bit-packed in samples.npz); default npy,png",
    )
    parser.add_argument("--grid", action="store_true", help="also write one PNG showing all samples")
    parser.add_argument(
        "--views",
        type=_view_list,
        help="comma-separated views per PNG, e.g. front,side,top,three-quarter (also: back, three-quarter-back); "
        "default one three-quarter view",
    )
    parser.add_argument(
        "--same-scale", action="store_true", help="draw all shapes at one scale (for size comparisons) instead of each filling its image"
    )
    parser.add_argument("--no-captions", action="store_true", help="no labels under the grid's and strips' tiles")
    parser.add_argument("--voxel-size", type=_positive_float, default=1.0, help="mesh units per voxel, in mm (default 1)")
    parser.add_argument("--keep-largest", action="store_true", help="meshes keep only their largest connected part")
    parser.add_argument("--image-size", type=bounded_int(8, MAX_IMAGE_SIZE), default=256, help=f"PNG side in pixels (at most {MAX_IMAGE_SIZE})")
    parser.add_argument(
        "--batchnorm",
        choices=["batch", "moving"],
        default="batch",
        help="BatchNorm statistics: each batch's own, as in training and the chapter (default), or the moving averages",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--interpolate",
        nargs=2,
        metavar=("A", "B"),
        help="interpolate between two latents, each seed:N (drawn with seed N), sample:N (row N of --latents, i.e. "
        "sample_00N) or file.npy[:N]",
    )
    mode.add_argument(
        "--arithmetic",
        nargs=3,
        metavar=("A", "B", "C"),
        help="shape arithmetic z_A - z_B + z_C; latents as for --interpolate",
    )
    parser.add_argument(
        "--latents",
        metavar="PATH",
        help="the latents.npy that sample:N reads (default: latents.npy in --output-dir, written by the sampling run)",
    )
    parser.add_argument("--steps", type=bounded_int(1, MAX_GENERATED), default=8, help="interpolation steps, ends included (default 8)")
    parser.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


@user_errors_to_exit_code
def generate_main(argv=None) -> int:
    """`threedgan-generate` / `scripts/generate.py`."""
    arguments = generate_parser().parse_args(argv)
    from threedgan import generate

    formats = generate.parse_formats(arguments.format)
    # Before the generator is built: a file where the output folder goes, or a read-only one, fails now.
    check_output_folder(arguments.output_dir, "--output-dir")
    model = generate.load_generator(arguments.weights, arguments.config_file)
    model.batch_statistics = arguments.batchnorm == "batch"
    options = dict(
        output_dir=arguments.output_dir,
        formats=formats,
        threshold=arguments.threshold,
        voxel_size=arguments.voxel_size,
        keep_largest_component=arguments.keep_largest,
        image_size=arguments.image_size,
        views=arguments.views,
        same_scale=arguments.same_scale,
        captions=not arguments.no_captions,
    )
    latents_path = arguments.latents or os.path.join(arguments.output_dir, generate.LATENTS_FILENAME)
    try:
        if arguments.interpolate:
            written = generate.interpolate(
                model, *arguments.interpolate, steps=arguments.steps, slerp=arguments.slerp, latents_path=latents_path, **options
            )
        elif arguments.arithmetic:
            written = generate.arithmetic(model, *arguments.arithmetic, latents_path=latents_path, **options)
        else:
            written = generate.sample(model, arguments.num, arguments.seed, grid=arguments.grid, **options)
    except OSError as error:
        if error.filename is None and not isinstance(error, ThreedganError):
            raise OSError(error.errno, f"{error.strerror or error} (writing outputs)", arguments.output_dir) from error
        raise
    print(f"wrote {len(written)} files to {arguments.output_dir}")
    return 0
