"""Run in a subprocess with KERAS_BACKEND set: checks which variables each kind of update changes, prints JSON.

Usage: python tests/step_probe.py tiny|chapter [SCENARIO ...]   (default: every scenario)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from threedgan.backend_steps import make_train_step  # noqa: E402
from threedgan.config import Config  # noqa: E402
from threedgan.models import build_discriminator, build_generator  # noqa: E402

Z_SIZE = 8
BATCH = 2


def tiny_models():
    """Small networks with BatchNorm in both, with the chapter's input and output shapes, so CPU backends run fast."""
    layers = keras.layers
    z = keras.Input((Z_SIZE,))
    x = layers.Dense(4 * 4 * 4 * 2)(z)
    x = layers.Reshape((4, 4, 4, 2))(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.UpSampling3D(16)(x)
    x = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32")(x)
    generator = keras.Model(z, x)
    v = keras.Input((64, 64, 64, 1))
    y = layers.Conv3D(2, 4, strides=4)(v)
    y = layers.BatchNormalization()(y)
    y = layers.LeakyReLU(0.2)(y)
    y = layers.Conv3D(2, 4, strides=4)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Flatten()(y)
    y = layers.Dense(1)(y)
    y = layers.Activation("sigmoid", dtype="float32")(y)
    return generator, keras.Model(v, y)


def snapshot(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.variables]


def changed(before, after):
    return sum(not np.array_equal(a, b) for a, b in zip(before, after))


def run(kind, z_size, previous_accuracy=None, **step_options):
    keras.utils.set_random_seed(0)
    if kind == "tiny":
        generator, discriminator = tiny_models()
    else:
        generator, discriminator = build_generator(Config()), build_discriminator(Config())
    step = make_train_step(
        generator, discriminator, keras.optimizers.Adam(1e-2, 0.5), keras.optimizers.Adam(1e-2, 0.5), **step_options
    )
    rng = np.random.default_rng(0)
    real = np.packbits((rng.random((BATCH, 32**3)) > 0.7).astype(np.uint8), axis=1)
    latents = lambda: rng.normal(0, 0.33, (BATCH, z_size)).astype("float32")
    if previous_accuracy is not None:
        step.last_accuracy = previous_accuracy
    before_g, before_d = snapshot(generator), snapshot(discriminator)
    metrics = step(real, latents(), latents())
    step.sync_variables()
    after_g, after_d = snapshot(generator), snapshot(discriminator)
    return {
        "generator_changed": changed(before_g, after_g),
        "generator_variables": len(before_g),
        "discriminator_changed": changed(before_d, after_d),
        "discriminator_variables": len(before_d),
        "metrics": {name: float(keras.ops.convert_to_numpy(value)) for name, value in metrics.items()},
    }


if __name__ == "__main__":
    kind, wanted = sys.argv[1], sys.argv[2:]
    z_size = Z_SIZE if kind == "tiny" else Config().z_size
    scenarios = {
        "both": dict(),
        "discriminator_only": dict(train_generator=False),
        "generator_only": dict(train_discriminator=False),
        "paper_rule_blocks": dict(previous_accuracy=0.9, accuracy_threshold=0.8),
        "paper_rule_allows": dict(previous_accuracy=0.8, accuracy_threshold=0.8),
    }
    report = {"backend": keras.backend.backend()}
    for name, options in scenarios.items():
        if not wanted or name in wanted:
            report[name] = run(kind, z_size, **options)
    print("PROBE " + json.dumps(report))
