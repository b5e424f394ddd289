"""Models: the chapter's generator and discriminator, layer for layer, as Keras 3 functional models.

Shapes (channels last), as the chapter's figures show them:

    generator      z (200) → (1,1,1,200) → (4,4,4,512) → (8,8,8,256) → (16,16,16,128) → (32,32,32,64) → (64,64,64,1)
    discriminator  (64,64,64,1) → (32,32,32,64) → (16,16,16,128) → (8,8,8,256) → (4,4,4,512) → (1,1,1,1)

The chapter's table has BatchNorm after the first four layers of each network and none after the last (its code adds
one to the last layers too; we follow the table, as the paper does). Layers keep the book's names-free defaults
(biases on every convolution) but get explicit names, so weights load by name as the chapter's `load_weights(path,
True)` does.

Computation: `config.deconvolution` picks how the generator's stride-2 transposed convolutions are computed: as
Keras' `Conv3DTranspose` or as the same layer evaluated as a sub-pixel convolution (`SubpixelConv3DTranspose`: same
variables, same outputs to rounding; XLA's 3-D transposed convolutions are many times slower than cuDNN's).

Layout: `config.data_format` picks the tensors' layout inside the networks. With `channels_first` the models reshape at
their edges (free, since volumes have one channel), so inputs, outputs, variable shapes and weight files are the same
in both layouts and a model trained in one loads into the other.
"""

from __future__ import annotations

import itertools

import keras
from keras import layers, ops

from threedgan.config import DATA_FORMAT_CHOICES, DECONVOLUTION_CHOICES

GENERATOR_FILTERS = (512, 256, 128, 64, 1)
DISCRIMINATOR_FILTERS = (64, 128, 256, 512, 1)
KERNEL_SIZE = 4
LEAKY_RELU_SLOPE = 0.2


def resolve_data_format(config) -> str:
    """The layout the networks use for `config.data_format`, resolving `"auto"` by what was measured fastest.

    `auto` is `channels_first` on the PyTorch backend with CUDA (cuDNN's native layout: Keras' channels-last
    convolutions transpose around every call there) and `channels_last` elsewhere (TensorFlow's CPU kernels support
    only channels-last 3-D convolutions; XLA picks its own physical layout either way). README "Speed" has the numbers.

    Args:
        config: a `threedgan.config.Config`.

    Returns:
        `"channels_last"` or `"channels_first"`.

    Raises:
        ValueError: an unknown `config.data_format`.
    """
    data_format = config.data_format
    if data_format == "auto":
        data_format = "channels_last"
        if keras.backend.backend() == "torch":
            import torch

            if torch.cuda.is_available():
                data_format = "channels_first"
    if data_format not in DATA_FORMAT_CHOICES[1:]:
        raise ValueError(f"data_format must be one of {DATA_FORMAT_CHOICES}, got {config.data_format!r}")
    return data_format


def _channel_axis(data_format: str) -> int:
    return 1 if data_format == "channels_first" else -1


def resolve_deconvolution(config) -> str:
    """How the generator computes its stride-2 transposed convolutions, resolving `config.deconvolution="auto"`.

    `auto` is `subpixel` on the JAX backend, where XLA's 3-D transposed convolutions (and above all their gradients)
    are 2–19 times slower than cuDNN's on an H100, and `transposed` (Keras' own layer) elsewhere. README "Speed" has
    the numbers.

    Args:
        config: a `threedgan.config.Config`.

    Returns:
        `"transposed"` or `"subpixel"`.

    Raises:
        ValueError: an unknown `config.deconvolution`.
    """
    deconvolution = config.deconvolution
    if deconvolution == "auto":
        deconvolution = "subpixel" if keras.backend.backend() == "jax" else "transposed"
    if deconvolution not in DECONVOLUTION_CHOICES[1:]:
        raise ValueError(f"deconvolution must be one of {DECONVOLUTION_CHOICES}, got {config.deconvolution!r}")
    return deconvolution


# For a stride-2, kernel-4, `same` transposed convolution, output 2m + p (p = 0, 1) in each dimension takes inputs
# m + p − 1 and m + p, through kernel taps _SUBPIXEL_TAPS[p][0] and _SUBPIXEL_TAPS[p][1].
_SUBPIXEL_TAPS = ((3, 1), (2, 0))


@keras.saving.register_keras_serializable(package="threedgan")
class SubpixelConv3DTranspose(layers.Conv3DTranspose):
    """`keras.layers.Conv3DTranspose` (kernel 4, stride 2, `same`) evaluated as a sub-pixel convolution.

    Each of the 2³ output phases of a stride-2 transposed convolution with a 4³ kernel is a plain 2³ convolution of
    the input: one stride-1 convolution with 8× the filters computes all of them, and a depth-to-space shuffle
    interleaves them (Shi et al. 2016). Same variables (kernel `(4, 4, 4, filters, input_channels)`, bias), same
    weight files and the same outputs to rounding as the parent layer, with the same multiply-adds — but as the
    kind of convolution every backend runs fast. Other kernel sizes, strides or paddings fall back to the parent.
    """

    def _subpixel_applies(self) -> bool:
        return (
            tuple(self.kernel_size) == (4, 4, 4)
            and tuple(self.strides) == (2, 2, 2)
            and self.padding == "same"
            and tuple(self.dilation_rate) == (1, 1, 1)
            and self.output_padding is None
        )

    def _phase_kernel(self):
        """The kernel as (2, 2, 2, input_channels, 8 × filters): one 2³ kernel per output phase."""
        filters, channels = self.kernel.shape[3], self.kernel.shape[4]
        kernel = ops.transpose(self.kernel, (0, 1, 2, 4, 3))
        taps = [_SUBPIXEL_TAPS[phase][tap] for phase in (0, 1) for tap in (0, 1)]
        for axis in range(3):
            kernel = ops.take(kernel, taps, axis=2 * axis)
            shape = list(kernel.shape)
            kernel = ops.reshape(kernel, shape[: 2 * axis] + [2, 2] + shape[2 * axis + 1 :])
        # (phase_d, tap_d, phase_h, tap_h, phase_w, tap_w, in, out) → (tap_d, tap_h, tap_w, in, phases…, out)
        kernel = ops.transpose(kernel, (1, 3, 5, 6, 0, 2, 4, 7))
        return ops.reshape(kernel, (2, 2, 2, channels, 8 * filters))

    def call(self, inputs):
        if not self._subpixel_applies():
            return super().call(inputs)
        filters = self.filters
        channels_last = self.data_format == "channels_last"
        depth, height, width = inputs.shape[1:4] if channels_last else inputs.shape[2:5]
        spatial_padding = [[1, 1]] * 3
        padding = [[0, 0]] + spatial_padding + [[0, 0]] if channels_last else [[0, 0], [0, 0]] + spatial_padding
        kernel = ops.cast(self._phase_kernel(), self.compute_dtype)
        phases = ops.conv(ops.pad(inputs, padding), kernel, padding="valid", data_format=self.data_format)
        grown = (2 * depth, 2 * height, 2 * width)
        if channels_last:
            phases = ops.reshape(phases, (-1, depth + 1, height + 1, width + 1, 2, 2, 2, filters))
            crops = [
                phases[:, d : d + depth, h : h + height, w : w + width, d, h, w, :]
                for d, h, w in itertools.product((0, 1), repeat=3)
            ]
            outputs = ops.reshape(ops.stack(crops, axis=4), (-1, depth, height, width, 2, 2, 2, filters))
            outputs = ops.reshape(ops.transpose(outputs, (0, 1, 4, 2, 5, 3, 6, 7)), (-1, *grown, filters))
        else:
            phases = ops.reshape(phases, (-1, 2, 2, 2, filters, depth + 1, height + 1, width + 1))
            crops = [
                phases[:, d, h, w, :, d : d + depth, h : h + height, w : w + width]
                for d, h, w in itertools.product((0, 1), repeat=3)
            ]
            outputs = ops.reshape(ops.stack(crops, axis=2), (-1, filters, 2, 2, 2, depth, height, width))
            outputs = ops.reshape(ops.transpose(outputs, (0, 1, 5, 2, 6, 3, 7, 4)), (-1, filters, *grown))
        if self.use_bias:
            bias_shape = (1, 1, 1, 1, filters) if channels_last else (1, filters, 1, 1, 1)
            outputs = ops.add(outputs, ops.reshape(ops.cast(self.bias, outputs.dtype), bias_shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def build_generator(config) -> keras.Model:
    """Builds the chapter's generator: a latent vector to a 64³ occupancy volume.

    Args:
        config: a `threedgan.config.Config`; uses `z_size`, `data_format` and `deconvolution`.

    Returns:
        A `keras.Model` named `generator` mapping (batch, z_size) to (batch, 64, 64, 64, 1) probabilities. Blocks
        1–4 are Conv3DTranspose → BatchNormalization → ReLU (512 filters stride 1 `valid`, then 256, 128, 64 with
        stride 2 `same`); block 5 is Conv3DTranspose (1 filter, stride 2, `same`) → sigmoid, without BatchNorm.
        The sigmoid runs in float32 under mixed precision so losses stay float32.

    Raises:
        ValueError: `config.z_size` is not positive, or an unknown `config.data_format` or `config.deconvolution`.
    """
    if config.z_size < 1:
        raise ValueError(f"z_size must be positive, got {config.z_size}")
    data_format = resolve_data_format(config)
    channels_first = data_format == "channels_first"
    upsampling_layer = SubpixelConv3DTranspose if resolve_deconvolution(config) == "subpixel" else layers.Conv3DTranspose
    latent = keras.Input(shape=(config.z_size,), name="z")
    latent_shape = (config.z_size, 1, 1, 1) if channels_first else (1, 1, 1, config.z_size)
    x = layers.Reshape(latent_shape, name="z_as_volume")(latent)
    for block, filters in enumerate(GENERATOR_FILTERS, start=1):
        first, last = block == 1, block == len(GENERATOR_FILTERS)
        x = (layers.Conv3DTranspose if first else upsampling_layer)(
            filters,
            KERNEL_SIZE,
            strides=1 if first else 2,
            padding="valid" if first else "same",
            data_format=data_format,
            name=f"generator_deconv_{block}",
        )(x)
        if last:
            if channels_first:  # (1, 64, 64, 64) and (64, 64, 64, 1) hold the same numbers in the same order
                side = x.shape[-1]
                x = layers.Reshape((side, side, side, 1), name="generator_channels_last")(x)
            x = layers.Activation("sigmoid", dtype="float32", name="generator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(axis=_channel_axis(data_format), name=f"generator_batchnorm_{block}")(x)
            x = layers.Activation("relu", name=f"generator_relu_{block}")(x)
    return keras.Model(latent, x, name="generator")


def build_discriminator(config) -> keras.Model:
    """Builds the chapter's discriminator: a 64³ volume to the probability that it is real.

    Args:
        config: a `threedgan.config.Config`; uses `cube_length` and `data_format`.

    Returns:
        A `keras.Model` named `discriminator` mapping (batch, 64, 64, 64, 1) to (batch, 1, 1, 1, 1). Blocks 1–4 are
        Conv3D (64, 128, 256, 512 filters, stride 2, `same`) → BatchNormalization → LeakyReLU(0.2); block 5 is
        Conv3D (1 filter, stride 1, `valid`) → sigmoid in float32, without BatchNorm.

    Raises:
        ValueError: `config.cube_length` is not 64 (the five blocks reduce exactly 64³ to 1³), or an unknown
            `config.data_format`.
    """
    if config.cube_length != 64:
        raise ValueError(f"the chapter's discriminator takes 64³ volumes, got cube_length={config.cube_length}")
    data_format = resolve_data_format(config)
    side = config.cube_length
    volume = keras.Input(shape=(side, side, side, 1), name="volume")
    x = volume
    if data_format == "channels_first":
        x = layers.Reshape((1, side, side, side), name="volume_channels_first")(x)
    for block, filters in enumerate(DISCRIMINATOR_FILTERS, start=1):
        last = block == len(DISCRIMINATOR_FILTERS)
        x = layers.Conv3D(
            filters,
            KERNEL_SIZE,
            strides=1 if last else 2,
            padding="valid" if last else "same",
            data_format=data_format,
            name=f"discriminator_conv_{block}",
        )(x)
        if last:  # (batch, 1, 1, 1, 1) in either layout
            x = layers.Activation("sigmoid", dtype="float32", name="discriminator_sigmoid")(x)
        else:
            x = layers.BatchNormalization(axis=_channel_axis(data_format), name=f"discriminator_batchnorm_{block}")(x)
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
    data_format = discriminator.get_layer("discriminator_conv_1").data_format
    for block, pool_size in zip(blocks, pool_sizes):
        activation = discriminator.get_layer(f"discriminator_leaky_relu_{block}").output
        x = layers.MaxPooling3D(pool_size, data_format=data_format, name=f"feature_max_pool_{block}")(activation)
        if data_format == "channels_first":  # the same feature order as the channels-last model
            x = layers.Permute((2, 3, 4, 1), name=f"feature_channels_last_{block}")(x)
        pooled.append(layers.Flatten(name=f"feature_flatten_{block}")(x))
    features = layers.Concatenate(name="features")(pooled) if len(pooled) > 1 else pooled[0]
    return keras.Model(discriminator.input, features, name="discriminator_features")
