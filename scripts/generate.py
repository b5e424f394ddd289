#!/usr/bin/env python3
"""Generate shapes from trained weights: `python scripts/generate.py --weights generator_weights.h5` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.cli import generate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(generate_main())
