"""Run in a subprocess with KERAS_BACKEND set: does a run stopped by Ctrl-C and resumed match an uninterrupted one?

Trains the small networks of tests/fast_models.py for 6 steps (checkpoints every 2) twice: once straight through, once
stopped by SIGINT after step 5 and resumed from the checkpoint that stop wrote. Prints one line `PROBE <json>` with
both runs' per-step losses and whether they and the final weights are identical.

Usage: KERAS_BACKEND=jax python tests/resume_probe.py WORK_DIR
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import threedgan.train as train_module  # noqa: E402
from tests.conftest import write_tree  # noqa: E402
from tests.fast_models import fast_builders  # noqa: E402
from threedgan.config import Config  # noqa: E402

STOP_AFTER_STEP = 5


class RecordingTrainer(train_module.Trainer):
    """Keeps every step's metrics as they leave the device."""

    def _fetch(self, pending):
        rows = super()._fetch(pending)
        self.__dict__.setdefault("rows", []).extend(rows)
        return rows


class InterruptingStep:
    """Delegates to a training step and raises SIGINT in the process after `stop_after` calls."""

    def __init__(self, inner, stop_after):
        self.__dict__.update(inner=inner, calls=0, stop_after=stop_after)

    def __call__(self, *batch):
        metrics = self.inner(*batch)
        self.__dict__["calls"] += 1
        if self.calls == self.stop_after:
            signal.raise_signal(signal.SIGINT)
        return metrics

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


def weights(trainer):
    trainer.gan.step.sync_variables()
    return [keras.ops.convert_to_numpy(v.value) for v in trainer.gan.generator.variables + trainer.gan.discriminator.variables]


def main(work_dir):
    train_module.build_generator, train_module.build_discriminator = fast_builders()
    data_dir = write_tree(os.path.join(work_dir, "data"), categories={"chair": 0}, models=3, rotations=2)
    base = Config.from_preset(
        "book", data_dir=data_dir, batch_size=2, epochs=2, seed=3, image_every_steps=0, checkpoint_every_steps=2,
        logdir=os.path.join(work_dir, "logs"), cache_dir=os.path.join(work_dir, "cache"), mixed_precision="float32",
    )
    reference = RecordingTrainer(base.replace(output_dir=os.path.join(work_dir, "reference"), run_name="reference"))
    reference.train()

    resumed_config = base.replace(output_dir=os.path.join(work_dir, "resumed"), run_name="resumed")
    make_step = train_module.make_train_step
    train_module.make_train_step = lambda *args, **kwargs: InterruptingStep(make_step(*args, **kwargs), STOP_AFTER_STEP)
    stopped = RecordingTrainer(resumed_config)
    try:
        stopped.train()
        raise SystemExit("the stop signal was not honoured")
    except train_module.TrainingInterrupted as interruption:
        message = str(interruption)
    train_module.make_train_step = make_step
    resumed = RecordingTrainer(resumed_config)
    resumed.train()

    losses = lambda rows: [[row["g_loss"], row["d_loss"]] for row in rows]
    reference_weights, resumed_weights = weights(reference), weights(resumed)
    report = {
        "backend": keras.backend.backend(),
        "interruption": message,
        "stopped_after_steps": len(stopped.rows),
        "reference_losses": losses(reference.rows),
        "resumed_losses": losses(stopped.rows) + losses(resumed.rows),
        "weights_identical": all(np.array_equal(a, b) for a, b in zip(reference_weights, resumed_weights)),
        "epoch_metrics_identical": reference.epoch_metrics == resumed.epoch_metrics,
    }
    print("PROBE " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
