"""Models: the chapter's generator and discriminator, layer for layer, as Keras 3 functional models.

Shapes (channels last), as the chapter's figures show them:

    generator      z (200) → (1,1,1,200) → (4,4,4,512) → (8,8,8,256) → (16,16,16,128) → (32,32,32,64) → (64,64,64,1)
    discriminator  (64,64,64,1) → (32,32,32,64) → (16,16,16,128) → (8,8,8,256) → (4,4,4,512) → (1,1,1,1)

The chapter's table has BatchNorm after the first four layers of each network and none after the last (its code adds
one to the last layers too; we follow the table, as the paper does). Layers keep the book's names-free defaults
(biases on every convolution) but get explicit names, so weights load by name as the chapter's `load_weights(path,
True)` does.

Computation: `config.deconvolution` picks how the generator's stride-2 transposed convolutions are computed: as
Keras' `Conv3DTranspose` (`PaddedConv3DTranspose`, which on PyTorch pads instead of cropping) or as the same layer
evaluated as a sub-pixel convolution (`SubpixelConv3DTranspose`: same variables, same outputs to rounding; XLA's 3-D
transposed convolutions are many times slower than cuDNN's).
`config.discriminator_convolution` likewise picks how the discriminator's stride-2 convolutions (blocks 1–4) are
computed: as Keras' `Conv3D` or as the same layers evaluated on the space-to-depth rearranged input
(`SpaceToDepthConv3D`: same variables, same outputs to rounding).

Layout: `config.data_format` picks the tensors' layout inside the networks. With `channels_first` the models reshape at
their edges (free, since volumes have one channel), so inputs, outputs, variable shapes and weight files are the same
in both layouts and a model trained in one loads into the other.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
from keras import layers, ops

from threedgan.config import DATA_FORMAT_CHOICES, DECONVOLUTION_CHOICES, DISCRIMINATOR_CONVOLUTION_CHOICES

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


def _resolve_by_backend(config, field: str, choices, on_jax: str, elsewhere: str) -> str:
    """`config.<field>`, with `"auto"` resolved to `on_jax` on the JAX backend and `elsewhere` otherwise."""
    value = getattr(config, field)
    if value == "auto":
        value = on_jax if keras.backend.backend() == "jax" else elsewhere
    if value not in choices[1:]:
        raise ValueError(f"{field} must be one of {choices}, got {getattr(config, field)!r}")
    return value


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
    return _resolve_by_backend(config, "deconvolution", DECONVOLUTION_CHOICES, on_jax="subpixel", elsewhere="transposed")


def resolve_discriminator_convolution(config) -> str:
    """How the discriminator computes its stride-2 convolutions, resolving `config.discriminator_convolution="auto"`.

    `auto` is `space_to_depth` on the JAX backend and `plain` (Keras' own layer) elsewhere, by measurement: in the
    layer probe (one H100, bf16, batch 32, forward + backward) XLA ran blocks 1–4 in 0.77 / 1.07 / 0.65 / 0.42 ms as
    space-to-depth convolutions against 4.04 / 1.86 / 0.82 / 0.60 ms as plain ones. Block 1 gains most: its one input
    channel becomes eight and the stride goes away. The PyTorch backend keeps cuDNN's plain convolutions.

    Args:
        config: a `threedgan.config.Config`.

    Returns:
        `"plain"` or `"space_to_depth"`.

    Raises:
        ValueError: an unknown `config.discriminator_convolution`.
    """
    return _resolve_by_backend(
        config, "discriminator_convolution", DISCRIMINATOR_CONVOLUTION_CHOICES, on_jax="space_to_depth", elsewhere="plain"
    )


@keras.saving.register_keras_serializable(package="threedgan")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose batch moments are differentiable twice on every backend.

    TensorFlow's `tf.nn.moments`, which Keras uses there, computes the variance around `stop_gradient(mean)`: right
    in value and first derivative, but its second derivatives miss the mean's term, so R1's gradient (a derivative of
    an input gradient) through BatchNorm came out wrong by 0.04 % even in float64. Here both moments are plain
    means, as JAX and PyTorch compute them. Same variables, same weight files.

    On PyTorch, training-mode calls go through `torch.native_batch_norm` instead of Keras' op-by-op computation
    (`_torch_batch_statistics_call`): the same values, a fraction of the kernels.
    """

    def call(self, inputs, training=None, mask=None):
        if (
            training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and keras.backend.backend() == "torch"
        ):
            return self._torch_batch_statistics_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _torch_batch_statistics_call(self, inputs):
        """PyTorch, training mode: the same normalisation and moving averages through `torch.native_batch_norm`.

        Keras' own layer runs there as a dozen eager float32 operations, each a kernel over a float32 copy of the
        activations: on an H100 they were over half of the PyTorch backend's GPU time (README "Speed"). The native
        op is one kernel forward and one backward in the input's dtype with float32 statistics, differentiable
        twice (R1). Its batch variance is the biased one Keras keeps, recovered from the inverse standard deviation
        it returns. The output is in PyTorch's channels_last_3d memory order (same shape, same values), which the
        next convolution then runs in without cuDNN transposing to NDHWC and back around it.
        """
        import torch

        axis = self.axis if self.axis >= 0 else inputs.ndim + self.axis
        values = inputs if axis == 1 else torch.movedim(inputs, axis, 1)
        if values.ndim == 5 and values.is_cuda:  # 2.7 % of the chapter iteration on an H100
            values = values.contiguous(memory_format=torch.channels_last_3d)
        shape = values.shape
        if values.ndim == 5 and values.is_contiguous(memory_format=torch.channels_last_3d):
            # PyTorch's CUDA BatchNorm has channels-last kernels for 4-D tensors only and sends 5-D ones through a
            # general `var_mean`. In this memory order depth and height merge into one axis without a copy, and
            # the statistics are per channel either way.
            values = values.reshape(shape[0], shape[1], shape[2] * shape[3], shape[4])
        outputs, mean, inverse_deviation = torch.native_batch_norm(
            values, self.gamma.value if self.scale else None, self.beta.value if self.center else None,
            None, None, True, 0.0, self.epsilon,
        )
        outputs = outputs.reshape(shape)
        with torch.no_grad():
            variance = torch.pow(inverse_deviation, -2) - self.epsilon
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                # momentum · moving + (1 − momentum) · batch, as one kernel
                moving.assign(torch.lerp(moving.value, batch.to(moving.value.dtype), 1.0 - self.momentum))
        outputs = outputs if axis == 1 else torch.movedim(outputs, 1, axis)
        return ops.cast(outputs, self.compute_dtype)

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        # float32 statistics under mixed precision, as Keras' own moments keep them.
        values = ops.cast(inputs, "float32") if inputs.dtype in ("float16", "bfloat16") else inputs
        mean = ops.mean(values, axis=self._reduction_axes, keepdims=True)
        variance = ops.mean(ops.square(values - mean), axis=self._reduction_axes)
        mean = ops.squeeze(mean, axis=self._reduction_axes)
        return ops.cast(mean, inputs.dtype), ops.cast(variance, inputs.dtype)


# For a stride-2, kernel-4, `same` transposed convolution, output 2m + p (p = 0, 1) in each dimension takes inputs
# m + p − 1 and m + p, through kernel taps _SUBPIXEL_TAPS[p][0] and _SUBPIXEL_TAPS[p][1].
_SUBPIXEL_TAPS = ((3, 1), (2, 0))


def _is_kernel_four_stride_two_same(layer) -> bool:
    """Whether a transposed convolution is the generator's upsampling kind: kernel 4, stride 2, `same`."""
    return (
        tuple(layer.kernel_size) == (4, 4, 4)
        and tuple(layer.strides) == (2, 2, 2)
        and layer.padding == "same"
        and tuple(layer.dilation_rate) == (1, 1, 1)
        and layer.output_padding is None
    )


@keras.saving.register_keras_serializable(package="threedgan")
class PaddedConv3DTranspose(layers.Conv3DTranspose):
    """`keras.layers.Conv3DTranspose` whose kernel-4, stride-2, `same` calls on PyTorch pad instead of cropping.

    Keras' torch backend computes every transposed convolution unpadded and then crops the output to the `same`
    size, since `same` can be asymmetric: for the generator that is a 66³ output sliced to 64³. The slice is a
    non-contiguous view, which the next layer copies, and its gradient is a zero-filled 66³ tensor with the gradient
    copied in. For kernel 4 and stride 2 the crop is one voxel on each side, which is exactly PyTorch's own `padding=1`:
    this layer passes that to `conv_transpose3d`, so cuDNN writes the 64³ output directly. Same variables, weight
    files and values; other backends and other configurations run Keras' code.
    """

    def call(self, inputs):
        if keras.backend.backend() != "torch" or not _is_kernel_four_stride_two_same(self):
            return super().call(inputs)
        import torch

        channels_last = self.data_format == "channels_last"
        values = torch.movedim(inputs, -1, 1) if channels_last else inputs
        # Keras' kernel is (depth, height, width, filters, input channels); PyTorch's (input channels, filters, …).
        kernel = torch.permute(ops.cast(self.kernel, self.compute_dtype), (4, 3, 0, 1, 2))
        bias = ops.cast(self.bias, self.compute_dtype) if self.use_bias else None
        outputs = torch.nn.functional.conv_transpose3d(values, kernel, bias, stride=2, padding=1)
        outputs = torch.movedim(outputs, 1, -1) if channels_last else outputs
        return self.activation(outputs)


@keras.saving.register_keras_serializable(package="threedgan")
class SubpixelConv3DTranspose(PaddedConv3DTranspose):
    """`keras.layers.Conv3DTranspose` (kernel 4, stride 2, `same`) evaluated as a sub-pixel convolution.

    Each of the 2³ output phases of a stride-2 transposed convolution with a 4³ kernel is a plain 2³ convolution of
    the input: one stride-1 convolution with 8× the filters computes all of them, and a depth-to-space shuffle
    interleaves them (Shi et al. 2016). Same variables (kernel `(4, 4, 4, filters, input_channels)`, bias), same
    weight files and the same outputs to rounding as the parent layer, with the same multiply-adds — but as the
    kind of convolution every backend runs fast. Other kernel sizes, strides or paddings fall back to the parent.
    """

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
        if not _is_kernel_four_stride_two_same(self):
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


@keras.saving.register_keras_serializable(package="threedgan")
class SpaceToDepthConv3D(layers.Conv3D):
    """`keras.layers.Conv3D` (kernel 4, stride 2, `same`) evaluated as a stride-1 convolution of the space-to-depth input.

    The mirror of `SubpixelConv3DTranspose`. Along each axis, `same` padding for kernel 4 and stride 2 pads one
    element before the input and `1 + (n mod 2)` after it (Keras puts the odd element at the end on every backend),
    so with `x'` the padded input, output `o` is `y[o] = Σ_k x'[2o + k] · w[k]` for taps `k = 0 … 3`. Writing
    `k = 2t + p` (tap pair `t`, phase `p`, both 0 or 1) and `s[j, p] = x'[2j + p]` (space-to-depth) gives
    `y[o] = Σ_{t,p} s[o + t, p] · w[2t + p]`: a stride-1, `valid` convolution with a 2³ kernel over the 8 phases
    × input channels. Same variables (kernel `(4, 4, 4, input_channels, filters)`, bias), same weight files, same
    multiply-adds and the same outputs to rounding as the parent layer; for the discriminator's first layer the
    input's one channel becomes eight and the stride goes away, for one pass over the input (an eighth of the
    output's size there). Other kernel sizes, strides, paddings, dilations or groups, and inputs of unknown spatial
    size, fall back to the parent.
    """

    def _space_to_depth_applies(self, input_shape=None) -> bool:
        applies = (
            tuple(self.kernel_size) == (4, 4, 4)
            and tuple(self.strides) == (2, 2, 2)
            and self.padding == "same"
            and tuple(self.dilation_rate) == (1, 1, 1)
            and self.groups == 1
        )
        if input_shape is not None:
            spatial = input_shape[1:4] if self.data_format == "channels_last" else input_shape[2:5]
            applies = applies and all(size is not None for size in spatial)
        return applies

    def _phase_kernel(self):
        """The kernel as (2, 2, 2, 8 × input_channels, filters), input channels ordered (phase_d, phase_h, phase_w, c)."""
        channels, filters = self.kernel.shape[3], self.kernel.shape[4]
        # tap k = 2t + p, so splitting each spatial axis of 4 into (2, 2) gives (t, p) in that order
        kernel = ops.reshape(self.kernel, (2, 2, 2, 2, 2, 2, channels, filters))
        # (t_d, p_d, t_h, p_h, t_w, p_w, c, f) → (t_d, t_h, t_w, p_d, p_h, p_w, c, f)
        kernel = ops.transpose(kernel, (0, 2, 4, 1, 3, 5, 6, 7))
        return ops.reshape(kernel, (2, 2, 2, 8 * channels, filters))

    def _space_to_depth(self, inputs):
        """Pads as `same` does and folds each 2³ block of the input into channels (phase_d, phase_h, phase_w, c)."""
        channels_last = self.data_format == "channels_last"
        spatial = inputs.shape[1:4] if channels_last else inputs.shape[2:5]
        spatial_padding = [[1, 1 + size % 2] for size in spatial]
        if channels_last:
            padding = [[0, 0]] + spatial_padding + [[0, 0]]
        else:
            padding = [[0, 0], [0, 0]] + spatial_padding
        inputs = ops.pad(inputs, padding)
        blocks = [(size + 1) // 2 + 1 for size in spatial]  # padded size / 2: the outputs plus one tap pair
        channels = inputs.shape[-1] if channels_last else inputs.shape[1]
        if channels_last:
            inputs = ops.reshape(inputs, (-1, blocks[0], 2, blocks[1], 2, blocks[2], 2, channels))
            inputs = ops.transpose(inputs, (0, 1, 3, 5, 2, 4, 6, 7))
            return ops.reshape(inputs, (-1, *blocks, 8 * channels))
        inputs = ops.reshape(inputs, (-1, channels, blocks[0], 2, blocks[1], 2, blocks[2], 2))
        inputs = ops.transpose(inputs, (0, 3, 5, 7, 1, 2, 4, 6))
        return ops.reshape(inputs, (-1, 8 * channels, *blocks))

    def call(self, inputs):
        if not self._space_to_depth_applies(inputs.shape):
            return super().call(inputs)
        kernel = ops.cast(self._phase_kernel(), self.compute_dtype)
        outputs = ops.conv(self._space_to_depth(inputs), kernel, padding="valid", data_format=self.data_format)
        if self.use_bias:
            bias_shape = (1, 1, 1, 1, self.filters) if self.data_format == "channels_last" else (1, self.filters, 1, 1, 1)
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
    upsampling_layer = SubpixelConv3DTranspose if resolve_deconvolution(config) == "subpixel" else PaddedConv3DTranspose
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
            x = BatchNormalization(axis=_channel_axis(data_format), name=f"generator_batchnorm_{block}")(x)
            x = layers.Activation("relu", name=f"generator_relu_{block}")(x)
    return keras.Model(latent, x, name="generator")


def build_discriminator(config) -> keras.Model:
    """Builds the chapter's discriminator: a 64³ volume to the probability that it is real.

    Args:
        config: a `threedgan.config.Config`; uses `cube_length`, `data_format` and `discriminator_convolution`.

    Returns:
        A `keras.Model` named `discriminator` mapping (batch, 64, 64, 64, 1) to (batch, 1, 1, 1, 1). Blocks 1–4 are
        Conv3D (64, 128, 256, 512 filters, stride 2, `same`) → BatchNormalization → LeakyReLU(0.2); block 5 is
        Conv3D (1 filter, stride 1, `valid`) → sigmoid in float32, without BatchNorm. The Conv3Ds of blocks 1–4 are
        `SpaceToDepthConv3D`s when `discriminator_convolution` resolves to `space_to_depth`.

    Raises:
        ValueError: `config.cube_length` is not 64 (the five blocks reduce exactly 64³ to 1³), or an unknown
            `config.data_format` or `config.discriminator_convolution`.
    """
    if config.cube_length != 64:
        raise ValueError(f"the chapter's discriminator takes 64³ volumes, got cube_length={config.cube_length}")
    data_format = resolve_data_format(config)
    strided_layer = SpaceToDepthConv3D if resolve_discriminator_convolution(config) == "space_to_depth" else layers.Conv3D
    side = config.cube_length
    volume = keras.Input(shape=(side, side, side, 1), name="volume")
    x = volume
    if data_format == "channels_first":
        x = layers.Reshape((1, side, side, side), name="volume_channels_first")(x)
    for block, filters in enumerate(DISCRIMINATOR_FILTERS, start=1):
        last = block == len(DISCRIMINATOR_FILTERS)
        x = (layers.Conv3D if last else strided_layer)(
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
            x = BatchNormalization(axis=_channel_axis(data_format), name=f"discriminator_batchnorm_{block}")(x)
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


# ------------------------------------------------------------------------------------- precision and sampling


def accelerator_present() -> bool:
    """Whether the active backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def configure_precision(config: Config) -> str:
    """Sets Keras' global dtype policy from `config.mixed_precision` and returns the compute dtype.

    `auto` picks bfloat16 on a GPU (no loss scaling needed, unlike float16) and float32 elsewhere; the networks'
    final sigmoids and the losses stay float32 either way.
    """
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bfloat16" if accelerator_present() else "float32"
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    return precision


def generate_volumes(generator: keras.Model, latents: np.ndarray, batch_size: int, batch_statistics: bool = True) -> np.ndarray:
    """Runs the generator on latents in chunks of `batch_size`.

    Args:
        generator: a model from `build_generator`.
        latents: (n, z_size) float32.
        batch_size: chunk size; use the training batch size, so BatchNorm sees batches like those it was trained on.
        batch_statistics: `True` normalises with each chunk's own statistics, as the chapter's generator always
            does (`training=True`); `False` uses the moving averages (Keras' inference mode). A short last chunk is
            filled up with latents from the start of the list so its statistics come from a full batch.

    Returns:
        float32 numpy array (n, 64, 64, 64) of occupancy probabilities; the same latents give the same volumes.
    """
    outputs = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        count = len(chunk)
        if batch_statistics and count < batch_size and len(latents) > count:
            chunk = np.concatenate([chunk, np.resize(latents, (batch_size - count, latents.shape[1]))])
        chunk = keras.ops.convert_to_tensor(chunk)
        if batch_statistics:
            volumes = forward_without_side_effects(generator, chunk)
        else:
            volumes = generator(chunk, training=False)
        outputs.append(keras.ops.convert_to_numpy(keras.ops.cast(volumes, "float32"))[:count, ..., 0])
    return np.concatenate(outputs) if outputs else np.zeros((0, 64, 64, 64), np.float32)


def forward_without_side_effects(model, inputs):
    """`model(inputs, training=True)` with batch statistics, leaving the model's BatchNorm averages untouched.

    On JAX the forward pass is compiled once per model (and input shape): run eagerly, each of its operations is
    dispatched and compiled on its own, which made the training loop's periodic sample images cost seconds.
    """
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    if keras.backend.backend() == "jax":
        forward = model.__dict__.get("_threedgan_compiled_forward")
        if forward is None:
            import jax

            forward = jax.jit(lambda weights, statistics, x: model.stateless_call(weights, statistics, x, training=True)[0])
            object.__setattr__(model, "_threedgan_compiled_forward", forward)  # not a tracked Keras attribute
        return forward(trainable, non_trainable, inputs)
    outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
    return outputs
