#!/usr/bin/env python3
"""Voxelise a folder of meshes / .binvox files as training will, into one packed `.npz` that `--data-dir` reads.

The `.npz` (bit-packed 32³ volumes, a few KB a shape) carries voxelised shapes to a machine without trimesh or
without the meshes, e.g. a GPU machine:

    python scripts/voxelize.py my_shapes/ --category all --split train --output my_shapes.npz
    python scripts/train.py --data-dir my_shapes.npz --category all
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.cli import _positive_float, _positive_int, user_errors_to_exit_code  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", metavar="FOLDER", help="a folder of meshes and/or .binvox files")
    parser.add_argument("--category", nargs="+", dest="categories", default=["all"], metavar="NAME")
    parser.add_argument("--split", nargs="+", dest="splits", default=["train"], choices=["train", "test"])
    parser.add_argument("--output", required=True, help="the .npz to write")
    parser.add_argument("--obj-ratio", type=_positive_float, default=1.0)
    parser.add_argument("--max-samples", type=_positive_int)
    parser.add_argument(
        "--mesh-margin", type=float, default=3.0, help="empty voxels around the shape in the 30³ grid (default 3)"
    )
    parser.add_argument("--mesh-aspect", choices=["keep", "stretch"], default="keep")
    parser.add_argument("--mesh-up-axis", choices=["z", "y"], default="z")
    parser.add_argument("--skip-bad", action="store_true", help="leave out files that cannot be voxelised")
    parser.add_argument("--workers", type=_positive_int, help="processes (default: all cores)")
    parser.add_argument("--cache-dir", help="default ~/.cache/threedgan")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


@user_errors_to_exit_code
def main(argv=None):
    arguments = build_parser().parse_args(argv)
    from threedgan.mesh_data import VoxeliseOptions, load_shape_dataset, write_packed_slice

    if not arguments.output.endswith(".npz"):
        from threedgan.errors import ConfigError

        raise ConfigError(f"--output must end in .npz, got {arguments.output}")
    options = VoxeliseOptions(arguments.mesh_margin, arguments.mesh_aspect, arguments.mesh_up_axis)
    datasets = {}
    for split in arguments.splits:
        datasets[split] = load_shape_dataset(
            arguments.data_dir, arguments.categories, split, arguments.obj_ratio, arguments.max_samples,
            cache_dir=arguments.cache_dir, options=options, skip_bad=arguments.skip_bad, workers=arguments.workers,
        )
    write_packed_slice(arguments.output, datasets)
    counts = ", ".join(f"{split} {len(dataset)}" for split, dataset in datasets.items())
    print(f"wrote {arguments.output} ({counts} shapes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
