"""Command lines: parse arguments, build one `Config`, call the package. The scripts in `scripts/` call these.

A user's mistake (bad path, bad data, bad value) prints one line `error: ...` to stderr and exits with status 2; a
traceback is shown only with `--debug`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from threedgan.config import (
    DATA_FORMAT_CHOICES,
    DECONVOLUTION_CHOICES,
    DEFAULT_PRESET,
    FIRST_CONVOLUTION_CHOICES,
    LOSS_CHOICES,
    PRESETS,
)
from threedgan.errors import ThreedganError

EXIT_USER_ERROR = 2


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # TensorFlow and absl log a page of start-up chatter; keep the terminal for what the user asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def user_errors_to_exit_code(main):
    """Wraps `main(argv) -> int` so that `ThreedganError`s become one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in argv
        _setup_logging(debug)
        try:
            return main(argv)
        except (ThreedganError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
            if debug:
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt as interruption:
            # Training's own interruption says which checkpoint it wrote and carries 128 + the signal's number.
            print(str(interruption) or "interrupted", file=sys.stderr)
            return getattr(interruption, "exit_status", 130)

    return wrapper


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _view_list(text):
    from threedgan.render import VIEWS

    views = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in views if name not in VIEWS]
    if unknown or not views:
        raise argparse.ArgumentTypeError(f"unknown view {unknown[0] if unknown else text!r}; choose from {', '.join(VIEWS)}")
    return views


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        "--first-convolution",
        choices=FIRST_CONVOLUTION_CHOICES,
        help="how D's first convolution is computed, a speed setting (default auto: space_to_depth on jax)",
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
    output.add_argument("--checkpoint-every-steps", type=_non_negative_int, help="checkpoint interval (0: off)")
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


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
    from threedgan.train import train

    metrics = train(config, resume=arguments.resume)
    summary = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name in ("g_loss", "d_loss", "d_accuracy"))
    print(f"done: {summary}; weights in {config.output_dir}")
    return 0


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threedgan-generate",
        description="Generate volumes, renders and meshes from trained weights (the latent prior comes from the run's config.json).",
    )
    parser.add_argument("--weights", required=True, help="generator_weights.h5 (config.json is read from the same folder)")
    parser.add_argument("--config", dest="config_file", help="config.json, if it is not beside the weights")
    parser.add_argument("--num", type=_positive_int, default=8, help="how many shapes (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same shapes, same files (default 0)")
    parser.add_argument("--output-dir", default="results", help="where files go (default results)")
    parser.add_argument("--threshold", type=float, default=0.5, help="occupancy threshold for renders and meshes")
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
    parser.add_argument("--image-size", type=_positive_int, default=256)
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
    parser.add_argument("--steps", type=_positive_int, default=8, help="interpolation steps, ends included (default 8)")
    parser.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


@user_errors_to_exit_code
def generate_main(argv=None) -> int:
    """`threedgan-generate` / `scripts/generate.py`."""
    arguments = generate_parser().parse_args(argv)
    from threedgan import generate

    formats = generate.parse_formats(arguments.format)
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
    if arguments.interpolate:
        written = generate.interpolate(
            model, *arguments.interpolate, steps=arguments.steps, slerp=arguments.slerp, latents_path=latents_path, **options
        )
    elif arguments.arithmetic:
        written = generate.arithmetic(model, *arguments.arithmetic, latents_path=latents_path, **options)
    else:
        written = generate.sample(model, arguments.num, arguments.seed, grid=arguments.grid, **options)
    print(f"wrote {len(written)} files to {arguments.output_dir}")
    return 0
