#!/usr/bin/env python3
"""Search the training recipe with Hyperopt: `python scripts/tune.py --category chair --max-evals 20` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from threedgan.tune import tune_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(tune_main())
