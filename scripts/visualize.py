"""Renders and/or meshes existing voxel files (.mat, .npy, .binvox), and shows how mesh files will be voxelised.

Examples:
    python scripts/visualize.py chair_000000000_1.mat
    python scripts/visualize.py generated/*.npy --format png,stl --voxel-size 2 --keep-largest
    python scripts/visualize.py chair_000000000_1.mat --views front,side,top,three-quarter
    python scripts/visualize.py my_shapes/vase/vase_01.obj     # the mesh beside the 64³ volume training will see
"""

import argparse
import math
import sys
from pathlib import Path

# Let the script run from a clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threedgan.mesh import export_mesh, volume_to_mesh  # noqa: E402
from threedgan.mesh_data import MESH_SUFFIXES, VoxeliseOptions, preview  # noqa: E402
from threedgan.render import VIEWS, render_views, render_volume, save_png  # noqa: E402
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
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help=".mat, .npy or .binvox volume files, or .obj/.off/.stl/.ply/.glb meshes (shown beside their voxelisation)",
    )
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
    parser.add_argument(
        "--views",
        help=f"comma-separated views side by side in each PNG, among {','.join(VIEWS)} (default: three-quarter)",
    )
    parser.add_argument(
        "--whole-grid", action="store_true",
        help="frame the whole voxel grid, as a fixed camera would, instead of the shape (shows its size in the grid)",
    )
    parser.add_argument("--mesh-margin", type=float, default=3.0, help="meshes: as train.py's (default: %(default)s)")
    parser.add_argument("--mesh-aspect", choices=["keep", "stretch"], default="keep", help="meshes: as train.py's")
    parser.add_argument("--mesh-up-axis", choices=["z", "y"], default="z", help="meshes: as train.py's")
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
        if not 1 <= arguments.image_size <= 4096:
            raise _UsageError(f"--image-size must be in [1, 4096], got {arguments.image_size}")
        if not (arguments.voxel_size > 0 and math.isfinite(arguments.voxel_size)):
            raise _UsageError(f"--voxel-size must be a finite positive number, got {arguments.voxel_size}")
        if not math.isfinite(arguments.threshold):
            raise _UsageError(f"--threshold must be a finite number, got {arguments.threshold}")
        if not math.isfinite(arguments.mesh_margin):
            raise _UsageError(f"--mesh-margin must be a finite number, got {arguments.mesh_margin}")
        views = _parse_views(arguments.views)
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
            is_mesh = file_name.lower().endswith(MESH_SUFFIXES)
            volume = _mesh_preview(file_name, arguments, formats, output_dir / f"{stem}.png") if is_mesh else load_volume(file_name)
            if "png" in formats and not is_mesh:
                framing = dict(threshold=arguments.threshold, image_size=arguments.image_size,
                               fit_to_object=not arguments.whole_grid)
                if views:
                    image = render_views(volume, views, labels=len(views) > 1, **framing)
                else:
                    image = render_volume(volume, **framing)
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


def _mesh_preview(file_name, arguments, formats, png_path):
    # A mesh is shown as training will see it: its render beside the voxelised 64³ volume, made as `--data-dir`
    # makes it, so the voxelisation can be checked before spending GPU time.
    options = VoxeliseOptions(arguments.mesh_margin, arguments.mesh_aspect, arguments.mesh_up_axis)
    image, volume, info = preview(file_name, options, image_size=arguments.image_size)
    print(
        f"{file_name}: {info['faces']:,} triangles, voxelised in {info['seconds']:.2f} s, fill {info['fill']}, "
        f"{volume.mean():.1%} of the 64^3 grid occupied"
    )
    if "png" in formats:
        print(save_png(image, png_path))
    return volume


def _parse_formats(text):
    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in formats if name not in FORMATS]
    if not formats or unknown:
        raise _UsageError(f"--format takes a comma-separated list of {','.join(FORMATS)}, got {text!r}")
    return list(dict.fromkeys(formats))


def _parse_views(text):
    if text is None:
        return None
    views = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in views if name not in VIEWS]
    if not views or unknown:
        raise _UsageError(f"--views takes a comma-separated list of {','.join(VIEWS)}, got {text!r}")
    return views


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
