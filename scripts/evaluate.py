#!/usr/bin/env python3
"""Measure generated shapes (MMD, COV, 1-NNA) or the discriminator's features (--classify): see --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.evaluate import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main())
