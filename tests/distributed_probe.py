"""Run in a subprocess with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=2: trains the tiny
networks of `step_probe` a few steps on one device and, from the same weights, batches and latents, on two devices
through `threedgan.distributed`; prints JSON with both runs' losses, the largest weight differences and the layouts.

Usage: python tests/distributed_probe.py [steps]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from step_probe import Z_SIZE, tiny_models  # noqa: E402
from threedgan.backend_steps import make_train_step  # noqa: E402
from threedgan.distributed import replica_count, shard_batch, setup_data_parallel  # noqa: E402

GLOBAL_BATCH = 4


def batches(steps):
    """The same global batches for both runs: packed real volumes and two latent batches per step."""
    rng = np.random.default_rng(0)
    for _ in range(steps):
        real = np.packbits((rng.random((GLOBAL_BATCH, 32**3)) > 0.7).astype(np.uint8), axis=1)
        latents = [rng.normal(0, 0.33, (GLOBAL_BATCH, Z_SIZE)).astype("float32") for _ in range(2)]
        yield real, *latents


def train(steps, initial_weights=None, distribution=None):
    keras.utils.set_random_seed(0)
    generator, discriminator = tiny_models()
    if initial_weights is not None:
        generator.set_weights(initial_weights[0])
        discriminator.set_weights(initial_weights[1])
    weights = (generator.get_weights(), discriminator.get_weights())
    generator_optimizer, discriminator_optimizer = keras.optimizers.Adam(1e-2, 0.5), keras.optimizers.Adam(1e-2, 0.5)
    step = make_train_step(generator, discriminator, generator_optimizer, discriminator_optimizer)
    losses, input_shardings = [], []
    for arrays in batches(steps):
        if distribution is not None:
            arrays = [shard_batch(distribution, array) for array in arrays]
            input_shardings.append([len(array.sharding.device_set) for array in arrays])
            input_shardings[-1].append([shard.data.shape[0] for shard in arrays[0].addressable_shards])
        metrics = step(*arrays)
        losses.append([float(metrics[name]) for name in ("d_loss_real", "d_loss_fake", "g_loss")])
    step.sync_variables()
    variables = [
        np.asarray(keras.ops.convert_to_numpy(v.value))
        for v in generator.variables + discriminator.variables + generator_optimizer.variables + discriminator_optimizer.variables
    ]
    replicated = all(
        v.value.sharding.is_fully_replicated and len(v.value.sharding.device_set) == replica_count(distribution)
        for v in generator.variables + discriminator.variables
    ) if distribution is not None else None
    state_replicated = all(
        leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == replica_count(distribution)
        for leaf in jax.tree_util.tree_leaves(step.state)
    ) if distribution is not None else None
    return weights, losses, variables, replicated, state_replicated, input_shardings


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    weights, one_losses, one_variables, _, _, _ = train(steps)
    distribution = setup_data_parallel(2)
    _, two_losses, two_variables, replicated, state_replicated, shardings = train(steps, weights, distribution)
    keras.distribution.set_distribution(None)
    # Largest absolute difference, and largest difference relative to the one-device value's scale.
    absolute = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(one_variables, two_variables))
    relative = max(
        float(np.max(np.abs(a - b) / (np.abs(a) + 1e-3))) if a.size else 0.0 for a, b in zip(one_variables, two_variables)
    )
    report = {
        "devices": [str(d) for d in jax.devices()],
        "one_device_losses": one_losses,
        "two_device_losses": two_losses,
        "max_abs_weight_difference": absolute,
        "max_rel_weight_difference": relative,
        "variables_replicated": replicated,
        "state_replicated": state_replicated,
        "input_shardings": shardings,
        "variables_compared": len(one_variables),
    }
    print("PROBE " + json.dumps(report))
