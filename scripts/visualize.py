"""Renders and/or meshes existing voxel files (.mat, .npy, .binvox).

Examples:
    python scripts/visualize.py chair_000000000_1.mat
    python scripts/visualize.py generated/*.npy --format png,stl --voxel-size 2 --keep-largest
"""

import argparse
import sys
from pathlib import Path

# Let the script run from a clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threedgan.mesh import export_mesh, volume_to_mesh  # noqa: E402
from threedgan.render import render_volume, save_png  # noqa: E402
from threedgan.volume_io import load_volume  # noqa: E402

FORMATS = ("png", "stl", "obj", "ply")


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    # argparse prints usage plus a message and exits; raise instead so
    # main() can print a single "error: ..." line and return 2.
    def error(self, message):
        raise _UsageError(message)


def build_parser():
    """Builds the command-line parser.

    Returns:
        An `argparse.ArgumentParser`.
    """
    parser = _ArgumentParser(
        description="Render voxel files to PNG and/or convert them to printable meshes.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help=".mat, .npy or .binvox volume files")
    parser.add_argument("--output-dir", default="results/visualize", help="where outputs go (default: %(default)s)")
    parser.add_argument(
        "--format", default="png",
        help=f"comma-separated output formats among {','.join(FORMATS)} (default: %(default)s)",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="occupancy threshold (default: %(default)s)")
    parser.add_argument(
        "--voxel-size", type=float, default=1.0,
        help="voxel edge length in mesh units, i.e. millimetres for printing (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-largest", action="store_true",
        help="keep only the largest connected piece in meshes (drops floating specks)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="PNG width and height (default: %(default)s)")
    return parser


def main(argv=None):
    """Runs the command line.

    Args:
        argv: Argument list without the program name; defaults to
            `sys.argv[1:]`.

    Returns:
        The exit code: 0 on success, 2 on bad arguments or unreadable or
        unusable input (after processing the remaining files).
    """
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
        formats = _parse_formats(arguments.format)
        if arguments.image_size < 1:
            raise _UsageError(f"--image-size must be positive, got {arguments.image_size}")
        if not arguments.voxel_size > 0:
            raise _UsageError(f"--voxel-size must be positive, got {arguments.voxel_size}")
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # --help
        return exit_request.code if isinstance(exit_request.code, int) else 0

    output_dir = Path(arguments.output_dir)
    used_stems = set()
    exit_code = 0
    for file_name in arguments.files:
        stem = _unique_stem(Path(file_name).stem, used_stems)
        try:
            volume = load_volume(file_name)
            if "png" in formats:
                image = render_volume(volume, threshold=arguments.threshold, image_size=arguments.image_size)
                print(save_png(image, output_dir / f"{stem}.png"))
            mesh_formats = [name for name in formats if name != "png"]
            if mesh_formats:
                mesh = volume_to_mesh(
                    volume, threshold=arguments.threshold, voxel_size=arguments.voxel_size,
                    keep_largest_component=arguments.keep_largest,
                )
                for name in mesh_formats:
                    print(export_mesh(mesh, output_dir / f"{stem}.{name}"))
        except (OSError, ValueError) as error:
            message = str(error)
            if str(Path(file_name)) not in message:
                message = f"{file_name}: {message}"
            print(f"error: {message}", file=sys.stderr)
            exit_code = 2
    return exit_code


def _parse_formats(text):
    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in formats if name not in FORMATS]
    if not formats or unknown:
        raise _UsageError(f"--format takes a comma-separated list of {','.join(FORMATS)}, got {text!r}")
    return list(dict.fromkeys(formats))


def _unique_stem(stem, used_stems):
    # Two inputs with the same name in different folders must not
    # overwrite each other's outputs.
    candidate, counter = stem, 1
    while candidate in used_stems:
        candidate = f"{stem}_{counter}"
        counter += 1
    used_stems.add(candidate)
    return candidate


if __name__ == "__main__":
    sys.exit(main())
