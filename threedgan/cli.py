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

from threedgan.config import DATA_FORMAT_CHOICES, DECONVOLUTION_CHOICES
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


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threedgan-train",
        description="Train the chapter's 3D-GAN on 3DShapeNets volumes. Unset flags keep the preset's value.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--category", nargs="+", dest="categories", metavar="NAME", help="categories, or 'all' (default chair)")
    data.add_argument("--data-dir", help="volumetric_data folder, a folder above it, or the zip (default $THREEDGAN_DATA, else download)")
    data.add_argument("--split", choices=["train", "test"])
    data.add_argument("--rotations", choices=["all", "canonical"], help="all 12 rotations (default) or _1 only")
    data.add_argument("--obj-ratio", type=_positive_float, help="fraction of each category's files (default 1.0)")
    data.add_argument("--max-samples", type=_positive_int, help="use at most N volumes (smoke runs)")
    data.add_argument("--cache-dir", help="where parsed data is cached (default ~/.cache/threedgan)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--config", dest="config_file", help="start from this config.json instead of a preset")
    recipe.add_argument("--preset", choices=["book", "paper", "better"], default=None, help="training recipe (default book)")
    recipe.add_argument("--epochs", type=_positive_int)
    recipe.add_argument("--batch-size", type=_positive_int)
    recipe.add_argument("--generator-learning-rate", "--g-lr", type=_positive_float)
    recipe.add_argument("--discriminator-learning-rate", "--d-lr", type=_positive_float)
    recipe.add_argument("--generator-beta-1", type=float)
    recipe.add_argument("--discriminator-beta-1", type=float)
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
    return Config.from_preset(arguments.preset or "book", **overrides)


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
        help="interpolate between two latents: integer seeds or .npy latent files",
    )
    mode.add_argument(
        "--arithmetic", nargs=3, metavar=("A", "B", "C"), help="shape arithmetic z_A - z_B + z_C (seeds or .npy latent files)"
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
    )
    if arguments.interpolate:
        written = generate.interpolate(model, *arguments.interpolate, steps=arguments.steps, slerp=arguments.slerp, **options)
    elif arguments.arithmetic:
        written = generate.arithmetic(model, *arguments.arithmetic, **options)
    else:
        written = generate.sample(model, arguments.num, arguments.seed, grid=arguments.grid, **options)
    print(f"wrote {len(written)} files to {arguments.output_dir}")
    return 0
