#!/usr/bin/env python3
"""Export 3DShapeNets grids as meshes, in ModelNet's layout `<output-dir>/<category>/<split>/<model>_<rotation>.off`.

Each 30³ grid is meshed with the project's own `threedgan.mesh.volume_to_mesh`, so the folder reaches the same shapes
through the mesh path (`--data-dir <output-dir>`) as the `.mat` path does:

    python scripts/export_meshes.py --data-dir 3DShapeNetsCode.zip --category chair --output-dir meshes/
    python scripts/voxelize.py meshes/ --category chair --output chair_from_meshes.npz
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.cli import _positive_int, user_errors_to_exit_code  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="volumetric_data folder, a folder above it, the zip or a packed .npz slice")
    parser.add_argument("--category", nargs="+", dest="categories", default=["chair"], metavar="NAME")
    parser.add_argument("--split", nargs="+", dest="splits", default=["train", "test"], choices=["train", "test"])
    parser.add_argument("--rotations", choices=["all", "canonical"], default="canonical", help="default canonical (_1)")
    parser.add_argument("--format", dest="file_format", choices=["off", "obj", "stl", "ply", "glb"], default="off")
    parser.add_argument("--max-samples", type=_positive_int, help="at most N shapes per split (evenly spaced)")
    parser.add_argument("--cache-dir", help="the .mat path's cache (default ~/.cache/threedgan)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


@user_errors_to_exit_code
def main(argv=None):
    arguments = build_parser().parse_args(argv)
    from threedgan.mesh_data import export_grids_as_meshes

    count = export_grids_as_meshes(
        arguments.data_dir, arguments.categories, arguments.output_dir, splits=arguments.splits,
        rotations=arguments.rotations, file_format=arguments.file_format, max_samples=arguments.max_samples,
        cache_dir=arguments.cache_dir,
    )
    print(f"wrote {count} meshes to {arguments.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
