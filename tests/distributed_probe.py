"""Run in a subprocess with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=2: trains the tiny
networks of `step_probe` a few steps on one device and, from the same weights, batches and latents, on two devices
through `threedgan.distributed`; prints JSON with both runs' losses, the largest weight differences and the layouts.

Usage: python tests/distributed_probe.py STEPS sgd|adam
       python tests/distributed_probe.py trainer FOLDER   (the whole `Trainer`, with tests/fast_models.py's networks)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from step_probe import Z_SIZE, tiny_models  # noqa: E402
from threedgan.training_step import make_train_step  # noqa: E402
from threedgan.distributed import replica_count, shard_batch, setup_data_parallel  # noqa: E402

GLOBAL_BATCH = 4


def batches(steps):
    """The same global batches for both runs: packed real volumes and two latent batches per step."""
    rng = np.random.default_rng(0)
    for _ in range(steps):
        real = np.packbits((rng.random((GLOBAL_BATCH, 32**3)) > 0.7).astype(np.uint8), axis=1)
        latents = [rng.normal(0, 0.33, (GLOBAL_BATCH, Z_SIZE)).astype("float32") for _ in range(2)]
        yield real, *latents


def optimizer(name):
    # SGD makes the comparison a clean check of the gradients; Adam's first steps move every weight by about
    # lr * sign(gradient), which turns float32 reordering noise in near-zero gradients into lr-sized differences.
    return keras.optimizers.SGD(1e-2) if name == "sgd" else keras.optimizers.Adam(1e-2, 0.5)


def train(steps, optimizer_name, initial_weights=None, distribution=None):
    keras.utils.set_random_seed(0)
    generator, discriminator = tiny_models()
    if initial_weights is not None:
        generator.set_weights(initial_weights[0])
        discriminator.set_weights(initial_weights[1])
    weights = (generator.get_weights(), discriminator.get_weights())
    generator_optimizer, discriminator_optimizer = optimizer(optimizer_name), optimizer(optimizer_name)
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


def per_replica_batchnorm_difference(initial_weights):
    """How far D's first loss on real volumes moves if each half of the batch is normalised with its own statistics.

    This is what unsynchronised (per-replica) BatchNorm would compute; the tolerance of the one-device versus
    two-device comparison must be far below it for that comparison to show that BatchNorm is synchronised.
    """
    from threedgan.losses import binary_crossentropy
    from threedgan.models import forward_without_side_effects
    from threedgan.data import unpack_and_upsample
    from threedgan.models import discriminator_logits

    _, discriminator = tiny_models()
    discriminator.set_weights(initial_weights[1])
    critic = discriminator_logits(discriminator)
    real = unpack_and_upsample(next(batches(1))[0])
    half = GLOBAL_BATCH // 2
    whole = binary_crossentropy(1.0, forward_without_side_effects(critic, real))
    halves = [binary_crossentropy(1.0, forward_without_side_effects(critic, part)) for part in (real[:half], real[half:])]
    return abs(float(whole) - 0.5 * float(halves[0] + halves[1]))


def trainer_run(folder):
    """Trains with `Trainer` on one device, then with `devices=2`, and compares the weights files they save."""
    import h5py

    from fast_models import fast_builders
    from threedgan import train as train_module
    from threedgan.config import Config
    from threedgan.data import VoxelDataset

    rng = np.random.default_rng(0)
    dataset = VoxelDataset(
        packed=np.packbits((rng.random((8, 32**3)) > 0.7).astype(np.uint8), axis=1),
        names=np.array([f"volume_{index}" for index in range(8)]),
        labels=np.zeros(8, int),
        category_names=["chair"],
    )
    weights = {}
    for devices in (None, 2):
        train_module.build_generator, train_module.build_discriminator = fast_builders()
        output_dir = os.path.join(folder, f"devices_{devices}")
        config = Config(
            batch_size=4, epochs=2, devices=devices, mixed_precision="float32", output_dir=output_dir,
            logdir=os.path.join(folder, "logs"), image_every_steps=0, checkpoint_every_steps=3,
            generator_learning_rate=1e-3, discriminator_learning_rate=1e-3,
        )
        train_module.Trainer(config, dataset=dataset, resume="never").train()
        values = {}
        for filename in (train_module.GENERATOR_WEIGHTS, train_module.DISCRIMINATOR_WEIGHTS):
            with h5py.File(os.path.join(output_dir, filename), "r") as handle:
                handle.visititems(
                    lambda name, item: values.__setitem__(f"{filename}/{name}", item[()])
                    if isinstance(item, h5py.Dataset) else None
                )
        weights[devices] = values
    keras.distribution.set_distribution(None)
    same_names = sorted(weights[None]) == sorted(weights[2])
    differences = {name: float(np.max(np.abs(weights[None][name] - weights[2][name]))) for name in weights[None]}
    return {"same_datasets": same_names, "differences": differences, "learning_rate": 1e-3, "steps": 4}


if __name__ == "__main__":
    if sys.argv[1] == "trainer":
        print("PROBE " + json.dumps(trainer_run(sys.argv[2])))
        sys.exit(0)
    steps, optimizer_name = int(sys.argv[1]), sys.argv[2]
    weights, one_losses, one_variables, _, _, _ = train(steps, optimizer_name)
    distribution = setup_data_parallel(2)
    _, two_losses, two_variables, replicated, state_replicated, shardings = train(
        steps, optimizer_name, weights, distribution
    )
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
        "per_replica_batchnorm_loss_difference": per_replica_batchnorm_difference(weights),
    }
    print("PROBE " + json.dumps(report))
