"""Honest progress for training: epoch k/N, step s/S and an ETA for the whole run, even while one step is slow.

`Progress` is told after every step where the run stands (`step_done`) and when the device last caught up
(`synced`: the loop fetches metrics every few steps, which waits for the device). The rate comes from the synced
steps after this process's first (which compiles), so it includes everything the loop does between steps (sample
images, metrics, checkpoints). A background thread reprints the line every `heartbeat_seconds` when the main thread
has not, saying how long the current step has been running: a 57 s CPU step is no longer a silent minute.

On a terminal the line is rewritten in place (`\\r`), at most every `refresh_seconds`; elsewhere (logs, pipes) a full
line is printed every `heartbeat_seconds` and at the end of every epoch.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Optional

HEARTBEAT_SECONDS = 10.0
REFRESH_SECONDS = 0.5


def format_duration(seconds: Optional[float]) -> str:
    """`3:07:15`, `12:05`, `2 d 4:00:00`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}" if hours or days else f"{minutes}:{seconds:02d}"
    return f"{days} d {text}" if days else text


def format_step_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def device_description() -> str:
    """The device training runs on, in words: `NVIDIA H100 80GB HBM3 ×2`, `CPU (2 cores)`."""
    import keras

    backend = keras.backend.backend()
    names = []
    try:
        if backend == "jax":
            import jax

            if jax.default_backend() != "cpu":
                names = [device.device_kind for device in jax.devices()]
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        elif backend == "tensorflow":
            import tensorflow as tf

            for device in tf.config.list_physical_devices("GPU"):
                names.append(tf.config.experimental.get_device_details(device).get("device_name", device.name))
    except Exception:  # noqa: BLE001 - a description is informative only
        names = names or ["GPU"]
    if not names:
        return f"CPU ({os.cpu_count()} cores)"
    return names[0] + (f" ×{len(names)}" if len(names) > 1 else "")


class Progress:
    """Prints where training stands; see the module's description.

    Args:
        total_steps: steps the whole run will have done at its end (epochs × steps per epoch, or `max_steps`).
        steps_per_epoch, epochs: for `epoch k/N`.
        start_step: steps done before this process started (a resumed run).
        time_budget_seconds: this process stops after so much time (`None`: no budget); the ETA respects it.
        stream: where lines go (default `sys.stdout`, resolved at each write).
        heartbeat_seconds: the longest silence.
        clock: seconds, monotonic (tests pass a fake one).
        warmup_steps: this process's first steps that compile (one for each variant of the step, e.g. with and without
            lazy R1); the step time is measured from the end of the last of them.
    """

    def __init__(
        self,
        total_steps: int,
        steps_per_epoch: int,
        epochs: int,
        start_step: int = 0,
        time_budget_seconds: Optional[float] = None,
        stream=None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        clock=time.monotonic,
        warmup_steps: int = 1,
    ):
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.start_step = self.step = int(start_step)
        self.epoch = self.start_step // max(1, self.steps_per_epoch)
        self.batch = self.start_step % max(1, self.steps_per_epoch)
        self.time_budget_seconds = time_budget_seconds
        self._stream = stream
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.started = clock()
        self.step_started = self.started  # when the step now running began
        self.first_sync = None  # (step, time) of the first synced step after this process's first
        self.last_sync = None
        self.first_step_seconds = None
        self.warmup_steps = max(1, int(warmup_steps))
        self.warmup_seconds = None  # this process's first `warmup_steps` steps, compilation included
        self.metrics = {}
        self.status = ""  # e.g. "writing checkpoint"
        self._last_print = None
        self._line_open = False  # a \r line is on the terminal
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _is_terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    # ------------------------------------------------------------------------------------------------ the loop's calls

    def start(self) -> None:
        """Starts the heartbeat thread; on a terminal, log lines first clear the progress line they would join."""
        if self._thread is None and self.heartbeat_seconds:
            self._thread = threading.Thread(target=self._heartbeat, name="threedgan-progress", daemon=True)
            self._thread.start()
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._clear_before_log)

    def close(self) -> None:
        """Stops the heartbeat thread and ends an open terminal line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._clear_before_log)
        with self._lock:
            if self._line_open:
                self._write("\n")
                self._line_open = False

    def step_done(self, step: int, epoch: int, batch: int) -> None:
        """After each step: `step` steps done in all, `epoch` epochs complete, `batch` batches of the current one."""
        now = self.clock()
        with self._lock:
            if self.first_step_seconds is None and step > self.start_step:
                self.first_step_seconds = now - self.started  # until the first sync says better
            self.step, self.epoch, self.batch = step, epoch, batch
            self.step_started = now
            terminal = self._is_terminal()
            if terminal and (self._last_print is None or now - self._last_print >= REFRESH_SECONDS):
                self._print(now)

    def synced(self, step: int, metrics: Optional[dict] = None) -> None:
        """The device has finished `step` (its metrics were fetched); `metrics` are the newest step's."""
        now = self.clock()
        with self._lock:
            if metrics:
                self.metrics = dict(metrics)
            if step == self.start_step + 1:
                self.first_step_seconds = now - self.started
            if self.first_sync is None:
                if step >= self.start_step + self.warmup_steps:
                    # Every variant of the step has compiled by now: the rate is measured from here on.
                    self.first_sync = (step, now)
                    self.warmup_seconds = now - self.started
            elif step > self.first_sync[0]:
                self.last_sync = (step, now)

    def end_epoch(self, epoch: int) -> None:
        """Prints the line of the epoch just done, leaves it standing, and moves on to the next."""
        with self._lock:
            self._print(self.clock())
            self.epoch, self.batch = epoch, 0
            if self._line_open:
                self._write("\n")
                self._line_open = False

    def set_status(self, text: str) -> None:
        with self._lock:
            self.status = text

    # ------------------------------------------------------------------------------------------------------- numbers

    def seconds_per_step(self) -> Optional[float]:
        """Measured from synced steps after this process's first; the first step's time until then."""
        if self.first_sync is not None and self.last_sync is not None and self.last_sync[0] > self.first_sync[0]:
            return (self.last_sync[1] - self.first_sync[1]) / (self.last_sync[0] - self.first_sync[0])
        return self.first_step_seconds

    def remaining_seconds(self, now: Optional[float] = None) -> Optional[float]:
        """Until the run's end (or the time budget's, if sooner)."""
        now = self.clock() if now is None else now
        rate = self.seconds_per_step()
        remaining = None if rate is None else rate * max(0, self.total_steps - self.step)
        if self.time_budget_seconds is not None:
            budget_left = max(0.0, self.time_budget_seconds - (now - self.started))
            remaining = budget_left if remaining is None else min(remaining, budget_left)
        return remaining

    def estimated_total_seconds(self) -> Optional[float]:
        """The whole run from its first step, at the measured rate (the first step's own time included)."""
        rate = self.seconds_per_step()
        if rate is None:
            return None
        if self.warmup_seconds is not None:
            return self.warmup_seconds + rate * max(0, self.total_steps - self.warmup_steps)
        first = self.first_step_seconds or rate
        return first + rate * max(0, self.total_steps - 1)

    def line(self, now: Optional[float] = None) -> str:
        now = self.clock() if now is None else now
        width = len(f"{self.total_steps:,}")
        epoch_shown = min(self.epoch + 1, self.epochs) if self.batch or self.epoch < self.epochs else self.epochs
        parts = [
            f"epoch {epoch_shown}/{self.epochs}",
            f"step {self.step:>{width},}/{self.total_steps:,}",
        ]
        names = (("g_loss", "g_loss"), ("d_loss", "d_loss"), ("d_accuracy", "d_acc"))
        parts += [f"{short} {self.metrics[name]:.3f}" for name, short in names if name in self.metrics]
        rate = self.seconds_per_step()
        if rate is not None:
            parts.append(f"{format_step_time(rate)}/step")
        parts.append(f"elapsed {format_duration(now - self.started)}")
        remaining = self.remaining_seconds(now)
        budget_bound = (
            self.time_budget_seconds is not None
            and remaining is not None
            and remaining < (rate or 0.0) * max(0, self.total_steps - self.step)
        )
        parts.append(f"ETA {format_duration(remaining)}" + (" (time budget)" if budget_bound else ""))
        running = now - self.step_started
        if self.status:
            parts.append(f"{self.status} for {format_duration(running)}")
        elif self.step < self.total_steps and running >= self.heartbeat_seconds / 2:
            first = " (the first compiles)" if self.step == self.start_step else ""
            parts.append(f"step {self.step + 1:,} running for {format_duration(running)}{first}")
        return " · ".join(parts)

    # ------------------------------------------------------------------------------------------------------ printing

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_seconds)):
            self.beat()

    def beat(self) -> bool:
        """What the heartbeat thread does every second: prints the line if it has been quiet for
        `heartbeat_seconds` (on a terminal: for a second); returns whether it printed."""
        with self._lock:
            now = self.clock()
            quiet = None if self._last_print is None else now - self._last_print
            if quiet is None or quiet >= self.heartbeat_seconds or (self._is_terminal() and quiet >= 1.0):
                self._print(now)
                return True
            return False

    def _print(self, now: float) -> None:
        text = self.line(now)
        if self._is_terminal():
            columns = _terminal_columns()
            self._write("\r" + text[: columns - 1].ljust(columns - 1))
            self._line_open = True
        else:
            self._write(text + "\n")
        self._last_print = now

    def _clear_before_log(self, record) -> bool:
        """A logging filter that lets every record through, after wiping an open progress line off the terminal."""
        if self._line_open and self._lock.acquire(timeout=1.0):
            try:
                if self._line_open:
                    self._write("\r" + " " * (_terminal_columns() - 1) + "\r")
                    self._line_open = False
            finally:
                self._lock.release()
        return True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop training
            pass


def _terminal_columns() -> int:
    try:
        return max(40, os.get_terminal_size(sys.stdout.fileno()).columns)
    except (OSError, ValueError, AttributeError):
        return 120
