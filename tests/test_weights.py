"""Tests for threedgan.weights: legacy Keras 2 HDF5 weights files that Keras 3 and tf_keras both load."""

import h5py
import keras
import numpy as np
import pytest

from threedgan.config import Config
from threedgan.errors import WeightsError
from threedgan.models import (
    DISCRIMINATOR_FILTERS,
    GENERATOR_FILTERS,
    KERNEL_SIZE,
    LEAKY_RELU_SLOPE,
    build_discriminator,
    build_generator,
)
from threedgan.weights import load_weights_h5, save_weights_h5

BUILDERS = {"generator": build_generator, "discriminator": build_discriminator}


def randomize(model, seed):
    """Gives every variable distinct random values, so a swapped or skipped weight shows up as a mismatch."""
    generator = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(int(size) for size in variable.shape)
        # Positive values keep BatchNorm's moving variance valid; offsets keep them far from the initial 0s and 1s.
        variable.assign(generator.uniform(0.5, 1.5, size=shape).astype(np.float32) + 2.0)


def legacy_arrays(model):
    """{layer name: arrays in Keras 2 order} for the layers that hold weights, on Keras 3 or tf_keras."""
    arrays = {}
    for layer in model.layers:
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if variables:
            arrays[layer.name] = [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]
    return arrays


def assert_same_arrays(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        assert len(actual[name]) == len(expected[name]), name
        for got, want in zip(actual[name], expected[name]):
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert np.array_equal(got, want), name


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """The real generator and discriminator with random weights, saved once for the whole module."""
    folder = tmp_path_factory.mktemp("weights")
    saved = {}
    for seed, (name, builder) in enumerate(BUILDERS.items()):
        model = builder(Config())
        randomize(model, seed)
        path = folder / "nested" / f"{name}.h5"
        save_weights_h5(model, path)
        saved[name] = (path, legacy_arrays(model))
    return saved


def build_tf_keras_generator(tf_keras, z_size):
    """The chapter's generator in tf_keras, with the same layer names and structure as `build_generator`."""
    layers = tf_keras.layers
    latent = tf_keras.Input(shape=(z_size,), name="z")
    x = layers.Reshape((1, 1, 1, z_size), name="z_as_volume")(latent)
    for block, filters in enumerate(GENERATOR_FILTERS, start=1):
        first, last = block == 1, block == len(GENERATOR_FILTERS)
        x = layers.Conv3DTranspose(
            filters,
            KERNEL_SIZE,
            strides=1 if first else 2,
            padding="valid" if first else "same",
            name=f"generator_deconv_{block}",
        )(x)
        if last:
            x = layers.Activation("sigmoid", name="generator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(name=f"generator_batchnorm_{block}")(x)
            x = layers.Activation("relu", name=f"generator_relu_{block}")(x)
    return tf_keras.Model(latent, x, name="generator")


def build_tf_keras_discriminator(tf_keras, side):
    """The chapter's discriminator in tf_keras, with the same layer names and structure as `build_discriminator`."""
    layers = tf_keras.layers
    volume = tf_keras.Input(shape=(side, side, side, 1), name="volume")
    x = volume
    for block, filters in enumerate(DISCRIMINATOR_FILTERS, start=1):
        last = block == len(DISCRIMINATOR_FILTERS)
        x = layers.Conv3D(
            filters,
            KERNEL_SIZE,
            strides=1 if last else 2,
            padding="valid" if last else "same",
            name=f"discriminator_conv_{block}",
        )(x)
        if last:
            x = layers.Activation("sigmoid", name="discriminator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(name=f"discriminator_batchnorm_{block}")(x)
            x = layers.LeakyReLU(LEAKY_RELU_SLOPE, name=f"discriminator_leaky_relu_{block}")(x)
    return tf_keras.Model(volume, x, name="discriminator")


def build_tf_keras(tf_keras, name):
    config = Config()
    if name == "generator":
        return build_tf_keras_generator(tf_keras, config.z_size)
    return build_tf_keras_discriminator(tf_keras, config.cube_length)


def tiny_model(name="tiny", units=3):
    inputs = keras.Input(shape=(4,), name="x")
    x = keras.layers.Dense(units, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="batchnorm")(x)
    x = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, x, name=name)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip_is_bit_exact(saved_models, name):
    path, saved = saved_models[name]
    model = BUILDERS[name](Config())
    # A fresh model starts with moving statistics 0 and 1, so equality below proves they were loaded.
    batchnorm = f"{name}_batchnorm_1"
    assert not np.array_equal(legacy_arrays(model)[batchnorm][2], saved[batchnorm][2])
    load_weights_h5(model, path)
    assert_same_arrays(legacy_arrays(model), saved)


def test_file_has_the_legacy_keras2_layout(saved_models):
    path, saved = saved_models["generator"]
    with h5py.File(path, "r") as file:
        layer_names = [n.decode() if isinstance(n, bytes) else n for n in file.attrs["layer_names"]]
        assert layer_names == [layer.name for layer in build_generator(Config()).layers]
        assert "backend" in file.attrs and "keras_version" in file.attrs
        weight_names = [n.decode() if isinstance(n, bytes) else n for n in file["generator_batchnorm_1"].attrs["weight_names"]]
        assert weight_names == [
            "generator_batchnorm_1/gamma:0",
            "generator_batchnorm_1/beta:0",
            "generator_batchnorm_1/moving_mean:0",
            "generator_batchnorm_1/moving_variance:0",
        ]
        assert len(file["generator_relu_1"].attrs["weight_names"]) == 0
        kernel = file["generator_deconv_1"]["generator_deconv_1/kernel:0"]
        assert np.array_equal(kernel[()], saved["generator_deconv_1"][0])


def test_plain_keras3_load_weights_reads_the_file(saved_models):
    path, saved = saved_models["discriminator"]
    model = build_discriminator(Config())
    model.load_weights(str(path))
    assert_same_arrays(legacy_arrays(model), saved)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_file_loads_in_tf_keras_topologically_and_by_name(saved_models, name):
    tf_keras = pytest.importorskip("tf_keras")
    path, saved = saved_models[name]
    topological = build_tf_keras(tf_keras, name)
    topological.load_weights(str(path))
    assert_same_arrays(legacy_arrays(topological), saved)
    by_name = build_tf_keras(tf_keras, name)
    # The chapter's `load_weights(path, True)` meant by_name in Keras 2.2; tf_keras' second argument is skip_mismatch.
    by_name.load_weights(str(path), by_name=True)
    assert_same_arrays(legacy_arrays(by_name), saved)


def test_tf_keras_file_loads_into_keras3_model(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    legacy_model = build_tf_keras(tf_keras, "generator")
    randomize(legacy_model, seed=7)
    path = tmp_path / "keras2_generator.h5"
    legacy_model.save_weights(str(path))
    model = build_generator(Config())
    load_weights_h5(model, path)
    assert_same_arrays(legacy_arrays(model), legacy_arrays(legacy_model))


def test_by_name_loads_matching_layers_only(tmp_path):
    source = tiny_model()
    randomize(source, seed=1)
    path = save_weights_h5(source, tmp_path / "tiny.h5")
    inputs = keras.Input(shape=(4,), name="x")
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    other = keras.layers.Dense(5, name="other_head")(hidden)
    target = keras.Model(inputs, other)
    untouched = legacy_arrays(target)["other_head"]
    load_weights_h5(target, path, by_name=True)
    loaded = legacy_arrays(target)
    assert_same_arrays({"dense": loaded["dense"]}, {"dense": legacy_arrays(source)["dense"]})
    assert_same_arrays({"other_head": loaded["other_head"]}, {"other_head": untouched})


def test_save_is_atomic_and_overwrites(tmp_path):
    model = tiny_model()
    path = tmp_path / "a" / "b" / "tiny.h5"
    save_weights_h5(model, path)
    randomize(model, seed=3)
    save_weights_h5(model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.h5"]  # no temporary file left behind
    fresh = tiny_model()
    load_weights_h5(fresh, path)
    assert_same_arrays(legacy_arrays(fresh), legacy_arrays(model))


def test_save_refuses_a_suffix_keras3_would_misread(tmp_path):
    with pytest.raises(WeightsError, match="weights.keras"):
        save_weights_h5(tiny_model(), tmp_path / "weights.keras")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.h5"
    with pytest.raises(WeightsError, match="does not exist") as info:
        load_weights_h5(tiny_model(), path)
    assert str(path) in str(info.value)


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="not an HDF5 file") as info:
        load_weights_h5(tiny_model(), path)
    assert str(path) in str(info.value)


def test_hdf5_file_that_is_not_a_weights_file(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("volumes", data=np.zeros((2, 3)))
    with pytest.raises(WeightsError, match="not a Keras weights file") as info:
        load_weights_h5(tiny_model(), path)
    assert str(path) in str(info.value)


def test_discriminator_weights_into_generator(saved_models):
    path, _ = saved_models["discriminator"]
    model = build_generator(Config())
    before = legacy_arrays(model)
    with pytest.raises(WeightsError) as info:
        load_weights_h5(model, path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    # Both networks have nine layers with weights, so only the shape check can catch this; it names the first.
    assert "generator_deconv_1" in message and "(4, 4, 4, 512, 200)" in message and "(4, 4, 4, 1, 64)" in message
    assert_same_arrays(legacy_arrays(model), before)  # nothing half-loaded


def test_layer_count_mismatch(tmp_path):
    path = save_weights_h5(tiny_model(), tmp_path / "tiny.h5")
    inputs = keras.Input(shape=(4,), name="x")
    smaller = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
    with pytest.raises(WeightsError, match="3 layers") as info:
        load_weights_h5(smaller, path)
    assert str(path) in str(info.value)
