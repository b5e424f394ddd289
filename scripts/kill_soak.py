#!/usr/bin/env python3
"""Kills training with SIGKILL at random moments, resumes it each time, and checks that nothing was lost or damaged.

Each round starts `scripts/train.py` on a small generated data set with the chapter's networks, waits until the
run has written a checkpoint of its own (so every round moves training forward), waits a random fraction of one
step (so the kill lands inside a step or inside a checkpoint write), and sends SIGKILL. After every kill, each
checkpoint left must read back intact (sizes and SHA-256 of every file); the next run must resume from the newest
one. A last run finishes training; then the final step count, the weights and the absence of temporary files are
checked.

    python scripts/kill_soak.py --kills 20              # the soak; prints a summary, exit 1 if a check failed
    python scripts/kill_soak.py --kills 3 --keep-work   # keep the work folder to look at

`tests/test_kill_resume.py` runs a short campaign through `kill_and_resume`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))  # run from a clone without installing

from threedgan.checkpoint import CHECKPOINT_FOLDER, TEMPORARY_PREFIX, CheckpointFolder, read_checkpoint  # noqa: E402
from threedgan.errors import WeightsError  # noqa: E402

TRAIN_SCRIPT = REPOSITORY / "scripts" / "train.py"
POLL_SECONDS = 0.1
STARTUP_TIMEOUT_SECONDS = 300  # a fresh process imports TensorFlow, builds the networks and traces the step
FINAL_RUN_TIMEOUT_SECONDS = 900
_RESUMED = re.compile(r"resuming from (\S+): step (\d+)")


@dataclass
class KillReport:
    """What a campaign did and every guarantee it saw broken (`problems` is empty when all held).

    Attributes:
        kills: SIGKILLs delivered to a training process that was still running.
        kills_during_write: kills that left a half-written (hidden, temporary) checkpoint folder behind.
        resumed_steps: the step each run after the first resumed from.
        final_status: the last run's exit status.
        final_step: the newest checkpoint's step at the end.
        seconds: wall time of the campaign.
        problems: one line per broken guarantee.
    """

    kills: int = 0
    kills_during_write: int = 0
    resumed_steps: List[int] = field(default_factory=list)
    final_status: Optional[int] = None
    final_step: int = 0
    seconds: float = 0.0
    problems: List[str] = field(default_factory=list)


def newest_step(folder: CheckpointFolder) -> int:
    found = folder.steps_and_paths()
    return found[-1][0] if found else 0


def temporary_entries(output_dir: str) -> List[str]:
    checkpoints_dir = os.path.join(output_dir, CHECKPOINT_FOLDER)
    entries = []
    for directory in (output_dir, checkpoints_dir):
        if os.path.isdir(directory):
            entries += [os.path.join(directory, name) for name in os.listdir(directory) if name.startswith(TEMPORARY_PREFIX)]
    return entries


def wait_for(condition, timeout_seconds: float) -> bool:
    """Polls `condition()` every `POLL_SECONDS` until it is true (returns True) or the time is up (False)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return condition()


def launch(train_arguments: List[str], log_path: str) -> subprocess.Popen:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    environment.setdefault("KERAS_BACKEND", "tensorflow")
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *train_arguments],
            cwd=str(REPOSITORY),
            env=environment,
            stdout=subprocess.DEVNULL,  # the progress bar
            stderr=log,  # log lines, among them "resuming from ...: step N"
        )


def check_checkpoints(folder: CheckpointFolder, report: KillReport, moment: str) -> None:
    """Every checkpoint folder present must read back intact."""
    for step, path in folder.steps_and_paths():
        try:
            read_checkpoint(path)
        except WeightsError as error:
            report.problems.append(f"{moment}: checkpoint {step} is damaged: {error}")


def check_resume(log_path: str, expected_step: int, report: KillReport, run_number: int) -> None:
    with open(log_path) as log:
        text = log.read()
    match = _RESUMED.search(text)
    if expected_step == 0:
        if match:
            report.problems.append(f"run {run_number} resumed from step {match.group(2)} though no checkpoint existed")
        return
    if not match:
        report.problems.append(f"run {run_number} did not resume (newest checkpoint: step {expected_step}); log {log_path}")
        return
    report.resumed_steps.append(int(match.group(2)))
    if int(match.group(2)) != expected_step:
        report.problems.append(f"run {run_number} resumed from step {match.group(2)}, the newest checkpoint is {expected_step}")


def kill_and_resume(
    train_arguments: List[str],
    output_dir: str,
    kills: int,
    total_steps: int,
    checkpoint_every_steps: int,
    seed: int = 0,
    log_dir: Optional[str] = None,
    on_progress=None,
) -> KillReport:
    """Runs `kills` rounds of start, wait, SIGKILL; then one run to the end; checks the guarantees throughout.

    Args:
        train_arguments: `scripts/train.py` arguments; they must include `--output-dir output_dir`, and the run
            must checkpoint every `checkpoint_every_steps` and end after `total_steps` steps.
        output_dir: the run's output folder.
        kills: how many rounds end in SIGKILL.
        total_steps: the step count a finished run has.
        checkpoint_every_steps: the run's checkpoint interval (at most this many steps may be lost per kill).
        seed: seeds the kill moments.
        log_dir: where each run's stderr goes (`run-<n>.log`); default `<output_dir>/../kill-logs`.
        on_progress: called with a line of text after each round, e.g. `print`.

    Returns:
        A `KillReport`.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    folder = CheckpointFolder(os.path.join(output_dir, CHECKPOINT_FOLDER), keep=1)
    log_dir = log_dir or os.path.join(os.path.dirname(os.path.abspath(output_dir)), "kill-logs")
    os.makedirs(log_dir, exist_ok=True)
    report = KillReport()
    step_seconds = None
    run_number = 0
    while report.kills < kills:
        run_number += 1
        start_step = newest_step(folder)
        log_path = os.path.join(log_dir, f"run-{run_number}.log")
        process = launch(train_arguments, log_path)
        try:
            # Kill only after this run wrote a checkpoint of its own, so every round moves training forward.
            wrote = wait_for(lambda: newest_step(folder) > start_step or process.poll() is not None, STARTUP_TIMEOUT_SECONDS)
            if process.poll() is not None or not wrote:
                report.problems.append(f"run {run_number} ended (status {process.poll()}) or stalled before a checkpoint; log {log_path}")
                break
            if step_seconds is None:
                # One step (with its checkpoint write) takes about as long as the gap between two checkpoints.
                seen, seen_at = newest_step(folder), time.monotonic()
                if not wait_for(lambda: newest_step(folder) > seen or process.poll() is not None, STARTUP_TIMEOUT_SECONDS):
                    report.problems.append(f"run {run_number} stalled; log {log_path}")
                    break
                step_seconds = (time.monotonic() - seen_at) / max(1, (newest_step(folder) - seen) // checkpoint_every_steps)
            check_resume(log_path, start_step, report, run_number)
            if newest_step(folder) >= total_steps:
                break  # training is done; the final run below only finishes it
            time.sleep(rng.uniform(0.0, step_seconds))  # a random moment inside the next step or checkpoint write
            seen_before_kill = newest_step(folder)
            if process.poll() is not None:
                report.problems.append(f"run {run_number} ended (status {process.returncode}) before the kill; log {log_path}")
                break
            process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        report.kills += 1
        if any(os.path.basename(path).startswith(f"{TEMPORARY_PREFIX}ckpt-") for path in temporary_entries(output_dir)):
            report.kills_during_write += 1
        after = newest_step(folder)
        if after < seen_before_kill:
            report.problems.append(f"kill {report.kills}: newest checkpoint went back from step {seen_before_kill} to {after}")
        check_checkpoints(folder, report, f"after kill {report.kills}")
        if on_progress:
            on_progress(
                f"kill {report.kills}/{kills}: newest checkpoint step {after}, "
                f"{report.kills_during_write} kills so far landed in a checkpoint write, {time.monotonic() - started:.0f} s"
            )

    run_number += 1
    start_step = newest_step(folder)
    log_path = os.path.join(log_dir, f"run-{run_number}.log")
    process = launch(train_arguments, log_path)
    try:
        report.final_status = process.wait(timeout=FINAL_RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        report.problems.append(f"the final run did not finish in {FINAL_RUN_TIMEOUT_SECONDS} s; log {log_path}")
    if report.final_status != 0:
        report.problems.append(f"the final run exited with status {report.final_status}; log {log_path}")
    check_resume(log_path, start_step, report, run_number)
    report.final_step = newest_step(folder)
    if report.final_step != total_steps:
        report.problems.append(f"training ended at step {report.final_step}, expected {total_steps}")
    check_checkpoints(folder, report, "at the end")
    leftovers = temporary_entries(output_dir)
    if leftovers:
        report.problems.append(f"temporary files remain: {leftovers}")
    report.seconds = time.monotonic() - started
    return report


def check_final_weights(output_dir: str, report: KillReport) -> None:
    """The final weights (and the newest checkpoint's) load into the chapter's networks."""
    from threedgan.config import Config
    from threedgan.models import build_discriminator, build_generator
    from threedgan.weights import load_weights_h5

    found = CheckpointFolder(os.path.join(output_dir, CHECKPOINT_FOLDER), keep=1).steps_and_paths()
    for folder in [output_dir] + [path for _, path in found[-1:]]:
        try:
            config = Config.load(folder)
            load_weights_h5(build_generator(config), os.path.join(folder, "generator_weights.h5"))
            load_weights_h5(build_discriminator(config), os.path.join(folder, "discriminator_weights.h5"))
        except Exception as error:  # any failure to load is what this check reports
            report.problems.append(f"weights in {folder} do not load: {error}")


def soak_arguments(data_dir: str, output_dir: str, work_dir: str, epochs: int, batch_size: int, samples: int, interval: int) -> List[str]:
    return [
        "--data-dir", data_dir, "--category", "chair", "--max-samples", str(samples), "--batch-size", str(batch_size),
        "--epochs", str(epochs), "--output-dir", output_dir, "--logdir", os.path.join(work_dir, "logs"),
        "--run-name", "soak", "--image-every-steps", "0", "--checkpoint-every-steps", str(interval),
        "--keep-checkpoints", "2", "--cache-dir", os.path.join(work_dir, "cache"), "--seed", "0",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive (default 20)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (default 1, the fastest steps)")
    parser.add_argument("--samples", type=int, default=4, help="volumes in the data set (default 4)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--work-dir", help="where data, outputs and logs go (default a new temporary folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    arguments = parser.parse_args(argv)

    from tests.conftest import write_tree  # the tests' generated 3DShapeNets-like volumes

    work_dir = arguments.work_dir or tempfile.mkdtemp(prefix="threedgan-kill-soak-")
    data_dir = write_tree(os.path.join(work_dir, "data"), categories={"chair": 0}, models=arguments.samples, rotations=1)
    output_dir = os.path.join(work_dir, "out")
    steps_per_epoch = arguments.samples // arguments.batch_size
    # A round moves training forward by one or two checkpoint intervals (the first by up to three, as it also times a
    # step): leave enough steps for every kill to find the run still training.
    epochs = -(-(2 * arguments.kills + 3) * arguments.checkpoint_every_steps // steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    train_arguments = soak_arguments(
        data_dir, output_dir, work_dir, epochs, arguments.batch_size, arguments.samples, arguments.checkpoint_every_steps
    )
    print(f"work folder {work_dir}: {arguments.kills} kills, {total_steps} steps, a checkpoint every {arguments.checkpoint_every_steps}", flush=True)
    report = kill_and_resume(
        train_arguments,
        output_dir,
        arguments.kills,
        total_steps,
        arguments.checkpoint_every_steps,
        seed=arguments.seed,
        on_progress=lambda line: print(line, flush=True),
    )
    check_final_weights(output_dir, report)
    summary = dict(report.__dict__, total_steps=total_steps, work_dir=work_dir)
    print(json.dumps(summary, indent=1))
    print(
        f"survived {report.kills} of {arguments.kills} kills ({report.kills_during_write} during a checkpoint write), "
        f"{len(report.problems)} problems, {report.seconds:.0f} s",
        flush=True,
    )
    if not arguments.keep_work and not report.problems:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if report.problems or report.kills < arguments.kills else 0


if __name__ == "__main__":
    sys.exit(main())
