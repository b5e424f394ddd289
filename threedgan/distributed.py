"""Data-parallel training over several devices, with Keras' own engine (`keras.distribution.DataParallel`, JAX).

How it works: `setup_data_parallel(devices)` sets a global `keras.distribution.DataParallel` before the networks are
built, so every variable (weights, BatchNorm statistics, Adam's moments) is created replicated on all devices. The
trainer then places each global batch (real volumes and both latent batches) with `shard_batch`, split along the batch
axis. The training step (`threedgan.training_step`) is one `jax.jit` function on JAX; given replicated state and batch-sharded inputs,
XLA's SPMD partitioner turns it into one program per device that exchanges what the math needs:

- Gradients: the losses are means over the *global* batch, so the partitioner all-reduces the per-device partial
  gradients; every replica applies the same Adam update and the replicas stay identical, bit for bit.
- BatchNorm: the batch mean and variance are reductions over the sharded batch axis, so they are all-reduced too.
  BatchNorm is therefore *synchronised*: it normalises with the statistics of the whole global batch, exactly as one
  device running the global batch would, and the moving averages are those of the global batch.
  `tests/test_distributed.py` checks this: from the same weights and global batch, two devices and one device give
  the same losses and weights within float32 reordering error (measured: losses ~1e-6 relative, weights 1.2e-7
  after 3 SGD steps), while per-replica BatchNorm statistics would move the first loss by ~1e-2. With Adam, a bias
  feeding straight into BatchNorm (zero gradient in exact arithmetic) turns that noise into steps of ±lr; such biases
  change nothing downstream.

So `--devices N` with `--batch-size B` trains the same model as one device with batch `B`; each device holds `B / N`
volumes. The weights are gathered when saved, so the files are those of single-device training.

TensorFlow (`setup_mirrored`, `tf.distribute.MirroredStrategy`): the trainer builds networks and optimizers under
`strategy.scope()`, so their variables are mirrored; `threedgan.training_step.TrainStep` sees the strategy and runs
each iteration with `strategy.run`, every replica on its `B / N` rows of the global batch. Each replica's loss is
divided by N and Keras' TF optimizer (`apply` in a replica context) all-reduces the gradients by sum, so the update is
the gradient of the mean over the global batch; the metrics are the replicas' mean. BatchNorm, however, is *per
replica* (Keras' `BatchNormalization(synchronized=False)`, the chapter's layers): each replica normalises its `B / N`
volumes with their own statistics and updates its own copy of the moving averages (the first replica's are saved).
So on TensorFlow `--devices N --batch-size B` trains the model of BatchNorm batches of `B / N`, not one device at
batch `B`. `tests/test_distributed.py` checks both halves on two logical CPUs: without BatchNorm, two replicas match
one device (2e-8 on weights after 2 SGD steps); with it, D's first loss equals the mean of the two half batches' losses
(to 1e-7), ~8e-3 from the whole batch's, and the runs then drift apart by ~1e-2 (the test allows 0.15 on losses, 0.05
on weights). PyTorch is not distributed here: `--devices` > 1 on it is a `ConfigError`.

Several machines (not tested here): call `keras.distribution.initialize()` on every process before
`setup_data_parallel`; every process draws the same global batch (same seed), and `shard_batch` hands each process's
devices their slices.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from threedgan.errors import ConfigError


def setup_data_parallel(devices: Optional[int] = None):
    """Sets a global `keras.distribution.DataParallel` over the first `devices` devices and returns it.

    Must run before the networks and optimizers are built: Keras gives a variable its layout (here: replicated) when it
    creates it.

    Args:
        devices: how many devices to use; `None` takes all that the backend sees (GPUs if any, else CPUs).

    Returns:
        The `keras.distribution.DataParallel` now set globally.

    Raises:
        ConfigError: the backend is not JAX, or it sees fewer devices than asked for.
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(
            f"--devices > 1 needs the jax or tensorflow backend, not {backend}: only keras.distribution's "
            "DataParallel (jax) and tf.distribute.MirroredStrategy (tensorflow) are wired into the training step"
        )
    available = keras.distribution.list_devices()
    count = len(available) if devices is None else devices
    if count > len(available):
        raise ConfigError(f"--devices {count}, but the jax backend sees only {len(available)}: {', '.join(available)}")
    distribution = keras.distribution.DataParallel(devices=available[:count])
    keras.distribution.set_distribution(distribution)
    return distribution


def setup_mirrored(devices: Optional[int] = None):
    """TensorFlow: a `tf.distribute.MirroredStrategy` over the first `devices` GPUs (else logical CPUs).

    Build the networks and optimizers under its `scope()`: their variables are then mirrored on every replica and
    `threedgan.training_step.make_train_step` runs each iteration with `strategy.run` on every replica's slice of the
    global batch (each replica's loss is scaled by 1/replicas; the optimizer all-reduces the gradients by sum).

    Raises:
        ConfigError: the backend is not TensorFlow, or it sees fewer devices than asked for.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(f"setup_mirrored needs the tensorflow backend, not {backend}")
    import tensorflow as tf

    available = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    count = len(available) if devices is None else devices
    if count > len(available):
        raise ConfigError(f"--devices {count}, but tensorflow sees only {len(available)}: {', '.join(available)}")
    return tf.distribute.MirroredStrategy(available[:count])


def replica_count(distribution) -> int:
    """How many replicas (devices) the distribution splits the batch over."""
    return int(distribution.device_mesh.devices.size)


def shard_batch(distribution, array):
    """Places a global batch on the replicas, split along its first (batch) axis.

    Args:
        distribution: from `setup_data_parallel`.
        array: the global batch (numpy or a jax array), the same on every process.

    Returns:
        A `jax.Array` of the global shape whose batch slices live on the replicas in order.
    """
    import jax

    layout = distribution.get_data_layout(array.shape).backend_layout
    if jax.process_count() == 1:
        return jax.device_put(array, layout)
    # Several processes: each contributes the slice of the global batch that its own devices hold.
    array = np.asarray(array)
    per_process = array.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    return jax.make_array_from_process_local_data(layout, array[start : start + per_process], array.shape)


def replicate(distribution, array):
    """Places a full copy of `array` on every replica (e.g. the packed data set, so batches are gathered locally)."""
    import jax

    layout = keras.distribution.TensorLayout([None] * len(array.shape), distribution.device_mesh)
    return jax.device_put(array, layout.backend_layout)
