"""Test helpers that act on a training run from inside its loop (wrap the step, raise signals) and read what it
wrote (checkpoints, weights files)."""
import os
import signal

import h5py

import threedgan.train as train_module
from threedgan import checkpoint as checkpoints


class StepWrapper:
    """Wraps a training step: after call `at_call`, runs `action(inner_step, metrics)` (which may replace them)."""

    def __init__(self, inner, at_call, action):
        self.__dict__.update(inner=inner, at_call=at_call, action=action, calls=0)

    def __call__(self, *batch):
        metrics = self.inner(*batch)
        self.__dict__["calls"] += 1
        if self.calls == self.at_call:
            metrics = self.action(self.inner, metrics) or metrics
        return metrics

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


def wrap_step(monkeypatch, at_call, action):
    """Makes the next `Gan.build` wrap its step in a `StepWrapper`; returns the unwrapped `make_train_step`."""
    original = train_module.make_train_step
    monkeypatch.setattr(
        train_module, "make_train_step", lambda *args, **kwargs: StepWrapper(original(*args, **kwargs), at_call, action)
    )
    return original


def raise_signals(*numbers):
    """A `wrap_step` action that raises these signals, in order, in the training process."""

    def action(step, metrics):
        for number in numbers:
            signal.raise_signal(number)

    return action


def checkpoint_steps(output_dir):
    return [step for step, _ in checkpoints.CheckpointFolder(os.path.join(output_dir, "checkpoints"), 99).steps_and_paths()]


def h5_arrays(path):
    """Every dataset of an HDF5 file, by its path inside the file."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays
