"""`scripts/train.py` with the stand-in networks of tests/fast_models.py, for tests that must kill a real process.

    python tests/watch_probe.py <train.py flags>

Exits with train_main's status. tests/test_watching.py SIGKILLs it after its first clock checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import threedgan.train as train_module  # noqa: E402
from tests.fast_models import fast_builders  # noqa: E402
from threedgan.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_module.build_generator, train_module.build_discriminator = fast_builders()
    sys.exit(train_main(sys.argv[1:]))
