#!/usr/bin/env python3
"""Train the chapter's 3D-GAN: `python scripts/train.py --category airplane` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
