"""Run in a subprocess with KERAS_BACKEND set: the speed settings (`data_format`, `deconvolution`) leave the networks'
function and weight files unchanged. Prints one `PROBE {json}` line of maximum differences.

Usage: python tests/layout_probe.py OUTPUT_FOLDER
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from threedgan.config import Config  # noqa: E402
from threedgan.models import SubpixelConv3DTranspose, _is_kernel_four_stride_two_same, build_discriminator  # noqa: E402
from threedgan.models import build_feature_extractor, build_generator  # noqa: E402
from threedgan.weights import load_weights_h5, save_weights_h5  # noqa: E402


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def largest_difference(a, b):
    return float(np.max(np.abs(numpy(a) - numpy(b))))


def layer_differences(rng):
    """SubpixelConv3DTranspose against Keras' Conv3DTranspose on odd sizes, with bias and activation."""
    results = {}
    data_formats = ["channels_last"] + ([] if keras.backend.backend() == "tensorflow" else ["channels_first"])
    for data_format in data_formats:
        for strides, padding in (((2, 2, 2), "same"), ((1, 1, 1), "same"), ((2, 2, 2), "valid")):
            options = dict(strides=strides, padding=padding, activation="relu", data_format=data_format)
            reference = keras.layers.Conv3DTranspose(3, 4, **options)
            layer = SubpixelConv3DTranspose(3, 4, **options)
            shape = (2, 5, 3, 4, 2) if data_format == "channels_last" else (2, 2, 5, 3, 4)
            inputs = rng.normal(size=shape).astype("float32")
            reference.build(shape)
            layer.build(shape)
            reference.bias.assign(rng.normal(size=3).astype("float32"))
            layer.set_weights(reference.get_weights())
            expected = reference(inputs)
            got = layer(inputs)
            key = f"{data_format}/{padding}/{strides[0]}"
            results[key] = dict(
                shapes_equal=tuple(expected.shape) == tuple(got.shape),
                difference=largest_difference(expected, got),
                scale=float(np.max(np.abs(numpy(expected)))),
                uses_subpixel=_is_kernel_four_stride_two_same(layer),
            )
    return results


def network_differences(rng, folder):
    """Every other layout the backend supports, against channels_last + transposed, from one set of weight files.

    On JAX, whose CPU runs Keras' transposed 3-D convolutions very slowly (half a minute a forward pass), the
    reference is channels_last + subpixel and only channels_first + subpixel is compared with it: `layer_differences`
    checks the sub-pixel layer against Keras' own on JAX, and the TensorFlow and PyTorch runs compare whole networks.
    """
    jax = keras.backend.backend() == "jax"
    reference_config = Config(data_format="channels_last", deconvolution="subpixel" if jax else "transposed")
    generator, discriminator = build_generator(reference_config), build_discriminator(reference_config)
    save_weights_h5(generator, os.path.join(folder, "generator.h5"))
    save_weights_h5(discriminator, os.path.join(folder, "discriminator.h5"))
    latents = rng.normal(0, 0.33, size=(1, 200)).astype("float32")
    volumes = numpy(generator(latents, training=True))
    scores = discriminator(volumes, training=True)
    features = build_feature_extractor(discriminator)(volumes)
    data_formats = ["channels_last"] + ([] if keras.backend.backend() == "tensorflow" else ["channels_first"])
    results = {}
    for data_format in data_formats:
        for deconvolution in ("subpixel",) if jax else ("transposed", "subpixel"):
            if (data_format, deconvolution) == (reference_config.data_format, reference_config.deconvolution):
                continue  # the reference itself
            config = Config(data_format=data_format, deconvolution=deconvolution)
            other_generator, other_discriminator = build_generator(config), build_discriminator(config)
            load_weights_h5(other_generator, os.path.join(folder, "generator.h5"))
            load_weights_h5(other_discriminator, os.path.join(folder, "discriminator.h5"))
            results[f"{data_format}/{deconvolution}"] = dict(
                generator=largest_difference(volumes, other_generator(latents, training=True)),
                discriminator=largest_difference(scores, other_discriminator(volumes, training=True)),
                features=largest_difference(features, build_feature_extractor(other_discriminator)(volumes)),
                output_shape=list(other_generator.output.shape[1:]),
            )
    return results


def jax_gradient_difference(rng):
    """The kernel gradient through the sub-pixel form equals the one through Keras' transposed convolution."""
    import jax

    shape = (2, 4, 4, 4, 3)
    reference = keras.layers.Conv3DTranspose(2, 4, strides=2, padding="same")
    layer = SubpixelConv3DTranspose(2, 4, strides=2, padding="same")
    reference.build(shape)
    layer.build(shape)
    layer.set_weights(reference.get_weights())
    inputs = rng.normal(size=shape).astype("float32")
    target = rng.normal(size=(2, 8, 8, 8, 2)).astype("float32")

    def loss(model):
        def value(weights):
            outputs, _ = model.stateless_call(weights, [], inputs)
            return jax.numpy.mean((outputs - target) ** 2)

        return jax.grad(value)([v.value for v in model.trainable_variables])

    expected, got = loss(reference), loss(layer)
    return max(largest_difference(a, b) for a, b in zip(expected, got))


def side_effect_free_forward(rng):
    """`forward_without_side_effects` (compiled on JAX) gives the training-mode output and leaves BatchNorm alone."""
    from threedgan.models import forward_without_side_effects

    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    batch = rng.normal(size=(5, 4)).astype("float32")
    statistics = [numpy(v).copy() for v in model.non_trainable_variables]
    first = numpy(forward_without_side_effects(model, batch))
    second = numpy(forward_without_side_effects(model, batch))
    unchanged = all(np.array_equal(a, numpy(v)) for a, v in zip(statistics, model.non_trainable_variables))
    expected = numpy(model(batch, training=True))
    moved = not all(np.array_equal(a, numpy(v)) for a, v in zip(statistics, model.non_trainable_variables))
    return dict(
        difference=largest_difference(first, expected),
        repeatable=bool(np.array_equal(first, second)),
        statistics_unchanged=unchanged,
        keras_call_moves_statistics=moved,
        compiled="_threedgan_compiled_forward" in model.__dict__,
    )


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    report = dict(backend=keras.backend.backend(), layers=layer_differences(rng), networks=network_differences(rng, sys.argv[1]))
    report["forward"] = side_effect_free_forward(rng)
    if keras.backend.backend() == "jax":
        report["jax_gradient"] = jax_gradient_difference(rng)
    print("PROBE " + json.dumps(report))
