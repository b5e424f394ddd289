"""The networks follow the chapter's table layer by layer (as Keras' own layer tests check shapes and settings)."""
import keras
import numpy as np
import pytest

from threedgan.config import Config
from threedgan.models import build_discriminator, build_feature_extractor, build_generator


def conv_layers(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_generator_layers_follow_the_table():
    generator = build_generator(Config())
    convs = conv_layers(generator, keras.layers.Conv3DTranspose)
    assert [c.filters for c in convs] == [512, 256, 128, 64, 1]
    assert [c.kernel_size for c in convs] == [(4, 4, 4)] * 5
    assert [c.strides for c in convs] == [(1, 1, 1)] + [(2, 2, 2)] * 4
    assert [c.padding for c in convs] == ["valid"] + ["same"] * 4
    assert [c.output.shape[1:] for c in convs] == [
        (4, 4, 4, 512), (8, 8, 8, 256), (16, 16, 16, 128), (32, 32, 32, 64), (64, 64, 64, 1)
    ]
    batchnorms = conv_layers(generator, keras.layers.BatchNormalization)
    assert [b.name for b in batchnorms] == [f"generator_batchnorm_{i}" for i in (1, 2, 3, 4)], "none on the last layer"
    activations = [l.activation.__name__ for l in generator.layers if isinstance(l, keras.layers.Activation)]
    assert activations == ["relu"] * 4 + ["sigmoid"]
    assert generator.input.shape == (None, 200) and generator.output.shape == (None, 64, 64, 64, 1)


def test_discriminator_layers_follow_the_table():
    discriminator = build_discriminator(Config())
    convs = conv_layers(discriminator, keras.layers.Conv3D)
    assert [c.filters for c in convs] == [64, 128, 256, 512, 1]
    assert [c.kernel_size for c in convs] == [(4, 4, 4)] * 5
    assert [c.strides for c in convs] == [(2, 2, 2)] * 4 + [(1, 1, 1)]
    assert [c.padding for c in convs] == ["same"] * 4 + ["valid"]
    assert [c.output.shape[1:] for c in convs] == [
        (32, 32, 32, 64), (16, 16, 16, 128), (8, 8, 8, 256), (4, 4, 4, 512), (1, 1, 1, 1)
    ]
    batchnorms = conv_layers(discriminator, keras.layers.BatchNormalization)
    assert len(batchnorms) == 4 and batchnorms[-1].name == "discriminator_batchnorm_4"
    slopes = [l.negative_slope for l in discriminator.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert slopes == pytest.approx([0.2] * 4)
    assert discriminator.layers[-1].activation.__name__ == "sigmoid"
    assert discriminator.output.shape == (None, 1, 1, 1, 1)


def conv_parameters(kernel, c_in, c_out):
    return kernel**3 * c_in * c_out + c_out


def test_parameter_counts():
    generator_channels = [200, 512, 256, 128, 64, 1]
    expected_generator = sum(conv_parameters(4, a, b) for a, b in zip(generator_channels, generator_channels[1:]))
    expected_generator += sum(4 * c for c in generator_channels[1:5])  # gamma, beta, moving mean, moving variance
    assert build_generator(Config()).count_params() == expected_generator == 17_572_545
    discriminator_channels = [1, 64, 128, 256, 512, 1]
    expected = sum(conv_parameters(4, a, b) for a, b in zip(discriminator_channels, discriminator_channels[1:]))
    expected += sum(4 * c for c in discriminator_channels[1:5])
    assert build_discriminator(Config()).count_params() == expected == 11_051_713


def test_forward_shapes_and_ranges():
    config = Config()
    generator, discriminator = build_generator(config), build_discriminator(config)
    volumes = generator(np.random.default_rng(0).normal(0, 0.33, (2, 200)).astype("float32"), training=False)
    assert tuple(volumes.shape) == (2, 64, 64, 64, 1)
    values = keras.ops.convert_to_numpy(volumes)
    assert values.min() >= 0 and values.max() <= 1
    scores = keras.ops.convert_to_numpy(discriminator(volumes, training=False))
    assert scores.shape == (2, 1, 1, 1, 1) and np.all((scores >= 0) & (scores <= 1))


def test_feature_extractor_matches_the_papers_recipe():
    features = build_feature_extractor(build_discriminator(Config()))
    # max pooling 8, 4, 2 over 16³×128, 8³×256, 4³×512 → 2³ cells each
    assert features.output.shape == (None, 8 * 128 + 8 * 256 + 8 * 512) == (None, 7168)


def test_invalid_configuration_is_refused():
    class BadConfig:
        z_size = 0
        cube_length = 32

    with pytest.raises(ValueError, match="z_size must be positive, got 0"):
        build_generator(BadConfig())
    with pytest.raises(ValueError, match="takes 64³ volumes, got cube_length=32"):
        build_discriminator(BadConfig())
