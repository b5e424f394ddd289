"""Run in a subprocess with KERAS_BACKEND=tensorflow: splits the CPU into two logical devices, trains the tiny
networks of `step_probe` a few SGD steps on one device and, from the same weights and global batches, on two replicas
of a `tf.distribute.MirroredStrategy` (`threedgan.distributed.setup_mirrored`); prints JSON.

Usage: python tests/mirrored_probe.py STEPS
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import contextlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from distributed_probe import GLOBAL_BATCH, batches  # noqa: E402
from step_probe import Z_SIZE, tiny_models  # noqa: E402
from threedgan.losses import binary_crossentropy  # noqa: E402
from threedgan.models import forward_without_side_effects  # noqa: E402
from threedgan.training_step import make_train_step  # noqa: E402
from threedgan.data import unpack_and_upsample  # noqa: E402
from threedgan.distributed import setup_mirrored  # noqa: E402
from threedgan.models import discriminator_logits  # noqa: E402


def models(batchnorm):
    if batchnorm:
        return tiny_models()
    # The same shapes without BatchNorm: each replica's gradient is then exactly its slice's share of the global one.
    layers = keras.layers
    z = keras.Input((Z_SIZE,))
    x = layers.Dense(4 * 4 * 4 * 2)(z)
    x = layers.Reshape((4, 4, 4, 2))(x)
    x = layers.UpSampling3D(16)(layers.ReLU()(x))
    x = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32")(x)
    v = keras.Input((64, 64, 64, 1))
    y = layers.LeakyReLU(0.2)(layers.Conv3D(2, 4, strides=4)(v))
    y = layers.Flatten()(layers.Conv3D(2, 4, strides=4)(y))
    y = layers.Activation("sigmoid", dtype="float32")(layers.Dense(1)(y))
    return keras.Model(z, x), keras.Model(v, y)


def train(steps, batchnorm, initial_weights=None, strategy=None):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        generator, discriminator = models(batchnorm)
        if initial_weights is not None:
            generator.set_weights(initial_weights[0])
            discriminator.set_weights(initial_weights[1])
        weights = (generator.get_weights(), discriminator.get_weights())
        optimizers = keras.optimizers.SGD(1e-2), keras.optimizers.SGD(1e-2)
        step = make_train_step(generator, discriminator, *optimizers)
    losses = []
    for arrays in batches(steps):
        metrics = step(*arrays)
        losses.append([float(metrics[name]) for name in ("d_loss_real", "d_loss_fake", "g_loss")])
    variables = generator.variables + discriminator.variables
    values = [keras.ops.convert_to_numpy(v.value) for v in variables]
    replicas_identical = None
    if strategy is not None:
        # Trainable weights: one all-reduced update, the same on both replicas. BatchNorm's moving statistics: each
        # replica averages its own slices' statistics, so those copies may differ (the first replica's are saved).
        same = lambda v: len(v.value.values) == 2 and np.array_equal(*[np.asarray(r) for r in v.value.values])
        replicas_identical = {
            "trainable": all(same(v) for v in generator.trainable_variables + discriminator.trainable_variables),
            "non_trainable": all(
                same(v) for v in generator.non_trainable_variables + discriminator.non_trainable_variables
            ),
        }
    return weights, losses, values, replicas_identical, step.replicas


def per_replica_first_loss(initial_weights):
    """D's first loss on real volumes if each half of the global batch is normalised with its own statistics."""
    _, discriminator = tiny_models()
    discriminator.set_weights(initial_weights[1])
    critic = discriminator_logits(discriminator)
    real = unpack_and_upsample(next(batches(1))[0])
    half = GLOBAL_BATCH // 2
    halves = [float(binary_crossentropy(1.0, forward_without_side_effects(critic, part))) for part in (real[:half], real[half:])]
    return 0.5 * sum(halves)


if __name__ == "__main__":
    steps = int(sys.argv[1])
    report = {"logical_cpus": [d.name for d in tf.config.list_logical_devices("CPU")]}
    strategy = setup_mirrored(2)  # one strategy per process: a second one's collectives would collide with its keys
    for batchnorm in (False, True):
        weights, one_losses, one_values, _, _ = train(steps, batchnorm)
        _, two_losses, two_values, identical, replicas = train(steps, batchnorm, weights, strategy)
        key = "batchnorm" if batchnorm else "no_batchnorm"
        report[key] = {
            "one_device_losses": one_losses,
            "two_device_losses": two_losses,
            "max_abs_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(one_values, two_values)),
            "replicas_identical": identical,
            "replicas": replicas,
        }
        if batchnorm:
            report[key]["per_replica_first_loss"] = per_replica_first_loss(weights)
    print("PROBE " + json.dumps(report))
