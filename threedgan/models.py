"""Models: the chapter's generator and discriminator, layer for layer, as Keras 3 functional models.

Shapes (channels last), as the chapter's figures show them:

    generator      z (200) → (1,1,1,200) → (4,4,4,512) → (8,8,8,256) → (16,16,16,128) → (32,32,32,64) → (64,64,64,1)
    discriminator  (64,64,64,1) → (32,32,32,64) → (16,16,16,128) → (8,8,8,256) → (4,4,4,512) → (1,1,1,1)

The chapter's table has BatchNorm after the first four layers of each network and none after the last (its code adds
one to the last layers too; we follow the table, as the paper does). Layers keep the book's names-free defaults
(biases on every convolution) but get explicit names, so weights load by name as the chapter's `load_weights(path,
True)` does.
"""

from __future__ import annotations

import keras
from keras import layers

GENERATOR_FILTERS = (512, 256, 128, 64, 1)
DISCRIMINATOR_FILTERS = (64, 128, 256, 512, 1)
KERNEL_SIZE = 4
LEAKY_RELU_SLOPE = 0.2


def build_generator(config) -> keras.Model:
    """Builds the chapter's generator: a latent vector to a 64³ occupancy volume.

    Args:
        config: a `threedgan.config.Config`; uses `z_size`.

    Returns:
        A `keras.Model` named `generator` mapping (batch, z_size) to (batch, 64, 64, 64, 1) probabilities. Blocks
        1–4 are Conv3DTranspose → BatchNormalization → ReLU (512 filters stride 1 `valid`, then 256, 128, 64 with
        stride 2 `same`); block 5 is Conv3DTranspose (1 filter, stride 2, `same`) → sigmoid, without BatchNorm.
        The sigmoid runs in float32 under mixed precision so losses stay float32.

    Raises:
        ValueError: `config.z_size` is not positive.
    """
    if config.z_size < 1:
        raise ValueError(f"z_size must be positive, got {config.z_size}")
    latent = keras.Input(shape=(config.z_size,), name="z")
    x = layers.Reshape((1, 1, 1, config.z_size), name="z_as_volume")(latent)
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
            x = layers.Activation("sigmoid", dtype="float32", name="generator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(name=f"generator_batchnorm_{block}")(x)
            x = layers.Activation("relu", name=f"generator_relu_{block}")(x)
    return keras.Model(latent, x, name="generator")


def build_discriminator(config) -> keras.Model:
    """Builds the chapter's discriminator: a 64³ volume to the probability that it is real.

    Args:
        config: a `threedgan.config.Config`; uses `cube_length`.

    Returns:
        A `keras.Model` named `discriminator` mapping (batch, 64, 64, 64, 1) to (batch, 1, 1, 1, 1). Blocks 1–4 are
        Conv3D (64, 128, 256, 512 filters, stride 2, `same`) → BatchNormalization → LeakyReLU(0.2); block 5 is
        Conv3D (1 filter, stride 1, `valid`) → sigmoid in float32, without BatchNorm.

    Raises:
        ValueError: `config.cube_length` is not 64 (the five blocks reduce exactly 64³ to 1³).
    """
    if config.cube_length != 64:
        raise ValueError(f"the chapter's discriminator takes 64³ volumes, got cube_length={config.cube_length}")
    side = config.cube_length
    volume = keras.Input(shape=(side, side, side, 1), name="volume")
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
            x = layers.Activation("sigmoid", dtype="float32", name="discriminator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(name=f"discriminator_batchnorm_{block}")(x)
            x = layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, name=f"discriminator_leaky_relu_{block}")(x)
    return keras.Model(volume, x, name="discriminator")


def discriminator_logits(discriminator: keras.Model) -> keras.Model:
    """The discriminator without its final sigmoid, sharing every layer and variable with it.

    Training takes the cross-entropy from these logits: the same loss as the chapter's binary cross-entropy on the
    sigmoid's output, but without Keras' clipping of probabilities to [1e-7, 1 − 1e-7], whose gradient is exactly
    zero once D saturates — which stalls the chapter's recipe for good (g_loss stuck at 16.1 = −log 1e-7).

    Args:
        discriminator: a model from `build_discriminator`.

    Returns:
        A model mapping volumes to (batch, 1, 1, 1, 1) logits, whose variables are `discriminator`'s, in order.

    Raises:
        ValueError: the model does not end in a sigmoid `Activation` layer, as `build_discriminator`'s does.
    """
    last = discriminator.layers[-1]
    if not (isinstance(last, layers.Activation) and last.activation is keras.activations.sigmoid):
        raise ValueError(f"expected a discriminator ending in a sigmoid Activation layer, got a final layer {last.name!r}")
    logits = keras.Model(discriminator.input, last.input, name="discriminator_logits")
    if [id(v) for v in logits.variables] != [id(v) for v in discriminator.variables]:
        raise ValueError("the logits model must share the discriminator's variables in the same order")
    return logits


def build_feature_extractor(discriminator: keras.Model, blocks=(2, 3, 4), pool_sizes=(8, 4, 2)) -> keras.Model:
    """The paper's shape descriptor (section 4.2): D's responses of conv layers 2–4, max-pooled and concatenated.

    The paper applies max pooling of kernel sizes {8, 4, 2} to the second, third and fourth layers' responses, which
    at 64³ turns 16³×128, 8³×256 and 4³×512 into 2³ cells each: 1024 + 2048 + 4096 = 7168 features.

    Args:
        discriminator: a model from `build_discriminator`.
        blocks: which blocks' activations to pool.
        pool_sizes: the max-pooling window (and stride) for each block.

    Returns:
        A model mapping (batch, 64, 64, 64, 1) volumes to (batch, 7168) features with the defaults.

    Raises:
        ValueError: `blocks` and `pool_sizes` differ in length.
    """
    if len(blocks) != len(pool_sizes):
        raise ValueError(f"blocks {blocks} and pool_sizes {pool_sizes} must have the same length")
    pooled = []
    for block, pool_size in zip(blocks, pool_sizes):
        activation = discriminator.get_layer(f"discriminator_leaky_relu_{block}").output
        x = layers.MaxPooling3D(pool_size, name=f"feature_max_pool_{block}")(activation)
        pooled.append(layers.Flatten(name=f"feature_flatten_{block}")(x))
    features = layers.Concatenate(name="features")(pooled) if len(pooled) > 1 else pooled[0]
    return keras.Model(discriminator.input, features, name="discriminator_features")
