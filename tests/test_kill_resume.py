"""SIGKILL at random moments, resume each time: no damaged file, no lost checkpoint, the expected end.

`scripts/train.py` runs as a subprocess with the chapter's networks on TensorFlow's CPU backend, on 4 generated
volumes in batches of 1 (the cheapest step: about 5 s with its 330 MB checkpoint, of which the write takes a third,
so kills land in writes too). Each round waits for the run's own first checkpoint, then kills it a random fraction of
a step later (seeded). `scripts/kill_soak.py` runs the same campaign with many more kills.
"""
import os

import pytest

from scripts.kill_soak import check_final_weights, kill_and_resume, soak_arguments
from tests.conftest import write_tree

KILLS = 3
SAMPLES = 4
BATCH_SIZE = 1
EPOCHS = 2  # 8 steps: three rounds move training forward by at most 2 + 2 + 3
CHECKPOINT_EVERY_STEPS = 1
KILL_SEED = 6


@pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL of a child process needs a POSIX system")
def test_training_survives_sigkill_at_random_moments(tmp_path):
    data_dir = write_tree(str(tmp_path / "data"), categories={"chair": 0}, models=SAMPLES, rotations=1)
    output_dir = str(tmp_path / "out")
    arguments = soak_arguments(data_dir, output_dir, str(tmp_path), EPOCHS, BATCH_SIZE, SAMPLES, CHECKPOINT_EVERY_STEPS)
    # The default recipe without R1: the kill moments are drawn from the step time, which R1's double backward would
    # make uneven (resuming the R1 schedule exactly is tests/test_checkpoint.py's job).
    arguments += ["--r1-gamma", "0"]
    total_steps = EPOCHS * SAMPLES // BATCH_SIZE
    report = kill_and_resume(arguments, output_dir, KILLS, total_steps, CHECKPOINT_EVERY_STEPS, seed=KILL_SEED)
    check_final_weights(output_dir, report)
    assert report.problems == [], report
    assert report.kills == KILLS and report.final_status == 0 and report.final_step == total_steps
    assert len(report.resumed_steps) == KILLS, "every run after a kill resumed from the newest checkpoint"
    assert report.resumed_steps == sorted(report.resumed_steps) and report.resumed_steps[0] >= 1
