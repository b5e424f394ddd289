"""Data-parallel training over several devices, with Keras' own engine (`keras.distribution.DataParallel`, JAX).

How it works: `setup_data_parallel(devices)` sets a global `keras.distribution.DataParallel` before the networks are
built, so every variable (weights, BatchNorm statistics, Adam's moments) is created replicated on all devices. The
trainer then places each global batch (real volumes and both latent batches) with `shard_batch`, split along the batch
axis. `threedgan.backend_steps._JaxStep` is one `jax.jit` function; given replicated state and batch-sharded inputs,
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

TensorFlow and PyTorch are not distributed here: `tf.distribute.MirroredStrategy` would need the custom step to run
under `strategy.run` with its own gradient all-reduce, and its BatchNorm would normalise per replica (each replica's
`B / N` volumes) unless `SyncBatchNormalization` replaced it: a different model from the single-device one.

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
            f"--devices > 1 needs the jax backend (KERAS_BACKEND=jax), not {backend}: only keras.distribution's "
            "DataParallel is wired into the training step"
        )
    available = keras.distribution.list_devices()
    count = len(available) if devices is None else devices
    if count > len(available):
        raise ConfigError(f"--devices {count}, but the jax backend sees only {len(available)}: {', '.join(available)}")
    distribution = keras.distribution.DataParallel(devices=available[:count])
    keras.distribution.set_distribution(distribution)
    return distribution


def replica_count(distribution) -> int:
    """How many replicas (devices) the distribution splits the batch over."""
    return int(distribution.device_mesh.devices.size)


def check_batch_size(distribution, batch_size: int) -> None:
    """Raises `ConfigError` unless `batch_size` splits evenly over the replicas."""
    replicas = replica_count(distribution)
    if batch_size % replicas:
        raise ConfigError(f"batch size {batch_size} does not split over {replicas} devices; pass a multiple of {replicas}")


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
