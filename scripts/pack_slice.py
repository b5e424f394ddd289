#!/usr/bin/env python3
"""Pack a few categories of the 3DShapeNets data into one small `.npz` that `--data-dir` reads like the archive.

    python scripts/pack_slice.py --data-dir 3DShapeNetsCode.zip --category chair airplane --output slice.npz

The file holds, for each category and split, the volumes bit-packed at 32³ (4 KiB each before compression) under
`<category>_<split>` and their file names under `<category>_<split>_names`: chair and airplane, both splits, all 12
rotations (20,580 volumes) take 3.4 MiB. A machine without the archive (a rented GPU, say) can then train, evaluate
and tune on those categories: pass the `.npz` as `--data-dir`. Rotations, `--max-samples` and `--obj-ratio` are applied when the slice is read, as with the archive.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

import numpy as np  # noqa: E402

from threedgan.cli import user_errors_to_exit_code  # noqa: E402
from threedgan.errors import ConfigError  # noqa: E402


def build_parser():
    """The command line's parser."""
    parser = argparse.ArgumentParser(prog="pack_slice.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="volumetric_data folder, a folder above it, or the zip (default $THREEDGAN_DATA)")
    parser.add_argument("--category", nargs="+", required=True, metavar="NAME", help="categories to pack, or 'all'")
    parser.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    parser.add_argument("--output", required=True, metavar="SLICE.npz", help="the file to write")
    parser.add_argument("--cache-dir", help="where parsed data is cached (default ~/.cache/threedgan)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def pack_slice(data_dir, categories, splits, output, cache_dir=None):
    """Writes the slice and returns `{key: volume count}`.

    Args:
        data_dir: the 3DShapeNets data (see `threedgan.data.load_dataset`).
        categories: category names, or `["all"]`.
        splits: any of `"train"`, `"test"`.
        output: the `.npz` to write (its folder is created).
        cache_dir: where parsed data is cached.

    Returns:
        A dict from each `<category>_<split>` key to its number of volumes.

    Raises:
        ConfigError: `output` does not end in `.npz`.
        DataError: see `load_dataset`.
    """
    from threedgan.data import list_categories, load_dataset

    if not str(output).endswith(".npz"):
        raise ConfigError(f"--output must end in .npz (the slice is read by its suffix), got {output}")
    if list(categories) == ["all"]:
        categories = list_categories(data_dir)
    arrays, counts = {}, {}
    for category in categories:
        for split in splits:
            dataset = load_dataset(data_dir, [category], split=split, rotations="all", cache_dir=cache_dir)
            key = f"{category}_{split}"
            arrays[key] = dataset.packed
            arrays[f"{key}_names"] = np.asarray(dataset.names)
            counts[key] = len(dataset)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez_compressed(output, **arrays)
    return counts


@user_errors_to_exit_code
def main(argv=None):
    """Runs the command line; returns the exit status (2 for bad input, with one `error: ...` line)."""
    arguments = build_parser().parse_args(argv)
    counts = pack_slice(arguments.data_dir, arguments.category, arguments.split, arguments.output, arguments.cache_dir)
    size = os.path.getsize(arguments.output) / 2**20
    print(f"wrote {arguments.output} ({size:.1f} MiB): " + ", ".join(f"{key} {count}" for key, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
