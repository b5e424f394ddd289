"""Run in a subprocess with KERAS_BACKEND set (and PROBE_FLOATX=float64 for the cross-backend comparison): runs the training step's scenarios on small networks from weights and
batches drawn with NumPy (so every backend starts from the same numbers) and writes the results to a `.npz`.

Usage: python tests/step_probe.py OUTPUT.npz
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from threedgan.models import BatchNormalization  # noqa: E402
from threedgan.training_step import Recipe, make_train_step  # noqa: E402

Z_SIZE = 8
BATCH = 4


def tiny_models():
    """Small networks with BatchNorm in both, with the chapter's input and output shapes, so CPU backends run fast."""
    layers = keras.layers
    z = keras.Input((Z_SIZE,))
    x = layers.Dense(4 * 4 * 4 * 2)(z)
    x = layers.Reshape((4, 4, 4, 2))(x)
    x = BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.UpSampling3D(16)(x)
    x = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32")(x)
    generator = keras.Model(z, x)
    v = keras.Input((64, 64, 64, 1))
    y = layers.Conv3D(2, 4, strides=4)(v)
    y = BatchNormalization()(y)
    y = layers.LeakyReLU(0.2)(y)
    y = layers.Conv3D(2, 4, strides=4)(y)
    y = BatchNormalization()(y)
    y = layers.Flatten()(y)
    y = layers.Dense(1)(y)
    y = layers.Activation("sigmoid", dtype="float32")(y)
    return generator, keras.Model(v, y)


def seeded_models(generator_average=False):
    """`tiny_models` with weights from NumPy: the same on every backend (Keras' initialisers are backend-specific)."""
    rng = np.random.default_rng(0)
    models = list(tiny_models())
    if generator_average:
        models.append(tiny_models()[0])
    for model in models[:2]:
        model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") if "variance" not in v.path else
                           np.ones(w.shape, "float32") for v, w in zip(model.weights, model.get_weights())])
    if generator_average:
        models[2].set_weights(models[0].get_weights())
    return models


def batch():
    rng = np.random.default_rng(1)
    real = np.packbits((rng.random((BATCH, 32**3)) > 0.7).astype(np.uint8), axis=1)
    latents = [rng.normal(0, 0.33, (BATCH, Z_SIZE)).astype("float32") for _ in range(4)]
    return real, latents


def values(models):
    return [keras.ops.convert_to_numpy(v.value).copy() for model in models for v in model.variables]


def run(recipe, steps=1, last_accuracy=None):
    """`steps` iterations of `recipe` with SGD (its update is linear in the gradient, so backends compare closely)."""
    models = seeded_models(generator_average=recipe.ema_decay > 0)
    step = make_train_step(*models[:2], keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05), recipe,
                           generator_average=models[2] if len(models) > 2 else None)
    if last_accuracy is not None:
        step.last_accuracy = last_accuracy
    real, latents = batch()
    before = values(models)
    for index in range(steps):
        metrics = step(real, latents[2 * index], latents[2 * index + 1])
    step.sync_variables()
    metrics = {name: float(keras.ops.convert_to_numpy(value)) for name, value in metrics.items()}
    return before, values(models), metrics, models


def linear_critic_r1(gamma):
    """R1 of D(x) = w·x + b, whose input gradient is w for every volume: the penalty is γ/2‖w‖², its gradient γw."""
    volumes = keras.Input((4, 4, 4, 1))
    critic = keras.Model(volumes, keras.layers.Dense(1)(keras.layers.Flatten()(volumes)))
    rng = np.random.default_rng(2)
    critic.set_weights([rng.normal(0, 1, (64, 1)).astype("float32"), np.zeros(1, "float32")])
    inputs = keras.ops.convert_to_tensor(rng.random((3, 4, 4, 4, 1)).astype("float32"))

    from threedgan import losses
    from threedgan.training_step import _StateEngine, _VariableEngine

    weights = [v.value for v in critic.trainable_variables]
    engine_class = _StateEngine if keras.backend.backend() == "jax" else _VariableEngine
    engine = engine_class({"critic": critic}, {}, {} if engine_class is _StateEngine else {"critic": critic.trainable_variables})

    def penalty(weights):
        forward = lambda x: engine.forward("critic", weights, [], x)
        (_, _), gradients = engine.input_gradients(forward, inputs)
        return losses.r1_penalty(gradients, gamma), None

    (value, _), gradients = engine.gradients(penalty, weights)
    return float(keras.ops.convert_to_numpy(value)), keras.ops.convert_to_numpy(gradients[0]), critic.get_weights()[0]


if __name__ == "__main__":
    if os.environ.get("PROBE_FLOATX"):
        keras.config.set_floatx(os.environ["PROBE_FLOATX"])
    keras.utils.set_random_seed(0)
    out = {"backend": np.array(keras.backend.backend())}
    scenarios = {
        "chapter": (Recipe(loss="chapter"), 1, None),
        # Two iterations: the first adds R1 (iteration 0), the second not; a fast average shows in two steps.
        "stable": (Recipe(loss="logistic", r1_gamma=10.0, r1_interval=2, ema_decay=0.5), 2, None),
        "no_r1": (Recipe(loss="logistic"), 1, None),
        "with_r1": (Recipe(loss="logistic", r1_gamma=10.0, r1_interval=1), 1, None),
        "paper_rule_blocks": (Recipe(loss="chapter", accuracy_threshold=0.8), 1, 0.9),
        "paper_rule_allows": (Recipe(loss="chapter", accuracy_threshold=0.8), 1, 0.8),
    }
    for name, (recipe, steps, last_accuracy) in scenarios.items():
        before, after, metrics, models = run(recipe, steps, last_accuracy)
        generator_count = len(models[0].variables)
        discriminator_count = len(models[1].variables)
        for index, (a, b) in enumerate(zip(before, after)):
            out[f"{name}/before/{index:03d}"] = a
            out[f"{name}/after/{index:03d}"] = b
        out[f"{name}/counts"] = np.array([generator_count, discriminator_count, len(models[2].variables) if len(models) > 2 else 0])
        out[f"{name}/trainable_flags"] = np.array([v.trainable for model in models for v in model.variables])
        for metric, value in metrics.items():
            out[f"{name}/metric/{metric}"] = np.array(value)
    penalty, gradient, weight = linear_critic_r1(10.0)
    out["r1/penalty"], out["r1/gradient"], out["r1/weight"] = np.array(penalty), gradient, weight
    np.savez(sys.argv[1], **out)
    print("PROBE done")
