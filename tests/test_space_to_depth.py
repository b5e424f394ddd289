"""`SpaceToDepthConv3D` (`discriminator_convolution="space_to_depth"`): the discriminator's stride-2 convolutions
computed on the space-to-depth rearranged input are Keras' own `Conv3D`, with the same variables and weight files.

Run as a script with KERAS_BACKEND set (`python tests/test_space_to_depth.py FOLDER`), this file is also the probe
that each backend runs in its own process, as `tests/layout_probe.py` is for the layouts: it prints one
`PROBE {json}` line of largest differences against Keras' `Conv3D` (outputs on every backend; gradients with
respect to kernel, bias and input on JAX) and of a weight-file round trip with a plain discriminator.
"""
import importlib.util
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from threedgan.config import Config  # noqa: E402
from threedgan.errors import ConfigError  # noqa: E402
from threedgan.models import (  # noqa: E402
    SpaceToDepthConv3D,
    build_discriminator,
    discriminator_logits,
    resolve_discriminator_convolution,
)

TOLERANCE = 1e-5  # float32 sums in another order, relative to the largest value compared (at least 1)
BFLOAT16_TOLERANCE = 2e-2  # bfloat16 rounds to 8 bits of mantissa; relative, as above

# (batch, depth, height, width, channels, filters): the discriminator's first layer at 64³, a later block's shape
# scaled down (even sides, several channels), then odd and even sides together (at odd sides `same` pads one more
# element after than before).
SHAPES = [(1, 64, 64, 64, 1, 64), (2, 8, 8, 8, 16, 8), (2, 5, 6, 7, 3, 4)]
# JAX's CPU convolution gradients are slow at 64³; the index mapping is the same at every even side.
GRADIENT_SHAPES = [(2, 16, 16, 16, 1, 64), (2, 5, 6, 7, 3, 4)]


# ------------------------------------------------------------------------------------------ the probe (subprocess)


def _numpy(value):
    return keras.ops.convert_to_numpy(value).astype("float64")


def _difference(expected, got):
    """The largest absolute difference, and the largest magnitude compared (at least 1) to measure it against."""
    expected, got = _numpy(expected), _numpy(got)
    return dict(difference=float(np.max(np.abs(expected - got))), scale=max(1.0, float(np.max(np.abs(expected)))))


def _pair(shape, data_format, rng, dtype=None, **options):
    """Keras' Conv3D and a SpaceToDepthConv3D holding the same random kernel and bias, and an input for them."""
    batch, depth, height, width, channels, filters = shape
    input_shape = (batch, depth, height, width, channels)
    if data_format == "channels_first":
        input_shape = (batch, channels, depth, height, width)
    options = dict(dict(strides=2, padding="same"), **options)
    # Zeros, then NumPy's numbers: JAX would compile its random initialiser anew for every kernel shape.
    options.update(kernel_initializer="zeros", data_format=data_format, dtype=dtype)
    reference = keras.layers.Conv3D(filters, 4, **options)
    layer = SpaceToDepthConv3D(filters, 4, **options)
    reference.build(input_shape)
    layer.build(input_shape)
    reference.kernel.assign(rng.uniform(-0.3, 0.3, size=reference.kernel.shape).astype("float32"))
    reference.bias.assign(rng.normal(size=filters).astype("float32"))
    layer.set_weights(reference.get_weights())
    return reference, layer, rng.normal(size=input_shape).astype("float32")


def _data_formats():
    # TensorFlow's CPU kernels have no channels-first 3-D convolution, Keras' own layer included.
    return ["channels_last"] + ([] if keras.backend.backend() == "tensorflow" else ["channels_first"])


def probe_outputs(rng):
    results = {}
    for data_format in _data_formats():
        for shape in SHAPES:
            reference, layer, inputs = _pair(shape, data_format, rng, activation="relu")
            expected, got = reference(inputs), layer(inputs)
            key = f"{data_format}/{'x'.join(map(str, shape))}"
            results[key] = dict(
                _difference(expected, got),
                shapes_equal=tuple(expected.shape) == tuple(got.shape),
                applies=layer._space_to_depth_applies(inputs.shape),
            )
        # Configurations the rearrangement does not cover compute as the parent layer does.
        for name, options in dict(stride_1=dict(strides=1), valid=dict(padding="valid")).items():
            reference, layer, inputs = _pair((2, 6, 5, 7, 2, 3), data_format, rng, **options)
            results[f"{data_format}/fallback_{name}"] = dict(
                _difference(reference(inputs), layer(inputs)),
                shapes_equal=True,
                applies=layer._space_to_depth_applies(inputs.shape),
            )
    return results


def probe_jax_gradients(rng):
    """Gradients of a loss through either layer, with respect to kernel, bias and input, on JAX."""
    import jax
    import jax.numpy as jnp

    results = {}
    for data_format in _data_formats():
        for shape in GRADIENT_SHAPES:
            reference, layer, inputs = _pair(shape, data_format, rng)
            target = rng.normal(size=tuple(reference.compute_output_shape(inputs.shape))).astype("float32")

            def gradients(model):
                def loss(variables, x):
                    outputs, _ = model.stateless_call(variables, [], x)
                    return jnp.sum(outputs * target)  # unscaled: gradients of order 1 and up, so 1e-5 means something

                # One compiled program rather than one per operation: JAX compiles each eager operation by itself.
                return jax.jit(jax.grad(loss, argnums=(0, 1)))([v.value for v in model.trainable_variables], inputs)

            (kernel, bias), data = gradients(reference)
            (got_kernel, got_bias), got_data = gradients(layer)
            key = f"{data_format}/{'x'.join(map(str, shape))}"
            results[key] = dict(
                kernel=_difference(kernel, got_kernel),
                bias=_difference(bias, got_bias),
                input=_difference(data, got_data),
            )
    return results


def probe_jax_bfloat16(rng):
    """Under mixed precision the layer computes in bfloat16 from the float32 variables, as Keras' layer does."""
    reference, layer, inputs = _pair(SHAPES[0], "channels_last", rng, dtype="mixed_bfloat16")
    expected, got = reference(inputs), layer(inputs)
    return dict(_difference(expected, got), dtype=str(got.dtype), kernel_dtype=str(layer.kernel.dtype))


def _training_forward(model, inputs):
    """The model's training-mode output; on JAX as one compiled program, since JAX compiles each eager operation
    by itself and a discriminator's worth of them takes seconds on a CPU."""
    if keras.backend.backend() != "jax":
        return model(inputs, training=True)
    import jax

    def forward(trainable, non_trainable, inputs):
        return model.stateless_call(trainable, non_trainable, inputs, training=True)[0]

    variables = [[v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]]
    return jax.jit(forward)(*variables, inputs)


def probe_weight_files(rng, folder):
    """Weight files move between a plain channels-last discriminator and a space-to-depth one, and are the same files.

    The space-to-depth model uses the other layout where the backend has one, so one round trip covers both
    settings: plain → file → fast (the project's loader) → file → plain (Keras' own loader of the legacy layout).
    """
    import h5py

    from threedgan.weights import load_weights_h5, save_weights_h5

    def contents(path):
        """Every array by its path, and every layer's weight names (the channels-first model has one more layer,
        its weightless input reshape, in the file's list of layers)."""
        arrays, weight_names = {}, {}

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                arrays[name] = item[()]
            elif len(item.attrs.get("weight_names", [])):
                weight_names[name] = [str(weight) for weight in item.attrs["weight_names"]]

        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
        return weight_names, arrays

    fast_format = _data_formats()[-1]
    plain = build_discriminator(Config(data_format="channels_last", discriminator_convolution="plain"))
    fast = build_discriminator(Config(data_format=fast_format, discriminator_convolution="space_to_depth"))
    back = build_discriminator(Config(data_format="channels_last", discriminator_convolution="plain"))
    for variable in plain.trainable_variables:  # break the symmetry of the initial zero biases
        variable.assign(variable + rng.normal(0, 0.01, size=variable.shape).astype("float32"))
    # The legacy HDF5 files the project writes everywhere, keyed by layer name. (Keras 3's native `.weights.h5`
    # files key layers by class name, so a model with any subclassed layer, SubpixelConv3DTranspose too, writes
    # different ones.)
    plain_path, fast_path = os.path.join(folder, "plain.h5"), os.path.join(folder, "fast.h5")
    save_weights_h5(plain, plain_path)
    load_weights_h5(fast, plain_path)
    save_weights_h5(fast, fast_path)  # before any training-mode call moves BatchNorm's statistics
    back.load_weights(fast_path)
    (plain_names, plain_arrays), (fast_names, fast_arrays) = contents(plain_path), contents(fast_path)
    same_file = plain_names == fast_names and plain_arrays.keys() == fast_arrays.keys()
    same_file = same_file and all(np.array_equal(plain_arrays[name], fast_arrays[name]) for name in plain_arrays)
    # Logits, which the sigmoid would squash, in training mode: BatchNorm normalises by the batch, so the outputs
    # depend on the loaded weights alone.
    volumes = (rng.random((2, 64, 64, 64, 1)) > 0.8).astype("float32")  # two: a batch to normalise by
    expected = _training_forward(discriminator_logits(plain), volumes)
    return dict(
        fast_format=fast_format,
        uses_space_to_depth=all(
            type(fast.get_layer(f"discriminator_conv_{block}")) is SpaceToDepthConv3D for block in (1, 2, 3, 4)
        ),
        same_file=bool(same_file),
        from_plain=_difference(expected, _training_forward(discriminator_logits(fast), volumes)),
        to_plain=_difference(expected, _training_forward(discriminator_logits(back), volumes)),
    )


def run_probe(folder):
    rng = np.random.default_rng(0)
    report = dict(backend=keras.backend.backend(), outputs=probe_outputs(rng), weights=probe_weight_files(rng, folder))
    if keras.backend.backend() == "jax":
        report["gradients"] = probe_jax_gradients(rng)
        report["bfloat16"] = probe_jax_bfloat16(rng)
    return report


# ------------------------------------------------------------------------------------------------------ the tests


def _within(row, tolerance=TOLERANCE):
    return row["difference"] <= tolerance * row["scale"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One probe per installed backend, run concurrently (each in its own process: one backend a process)."""
    running = {}
    for backend in ("jax", "tensorflow", "torch"):
        if importlib.util.find_spec(backend) is None:
            continue
        folder = tmp_path_factory.mktemp(backend)
        environment = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        # Output to files, not pipes: a probe filling a pipe nobody reads yet would stall until its turn.
        stdout, stderr = open(folder / "stdout", "w"), open(folder / "stderr", "w")
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(folder)], stdout=stdout, stderr=stderr, env=environment)
        running[backend] = (process, folder)
        stdout.close()
        stderr.close()
    results = {}
    for backend, (process, folder) in running.items():
        returncode = process.wait(timeout=600)
        lines = [line for line in (folder / "stdout").read_text().splitlines() if line.startswith("PROBE ")]
        results[backend] = (returncode, lines, (folder / "stderr").read_text())
    return results


def _report(reports, backend):
    if backend not in reports:
        pytest.skip(f"{backend} is not installed")
    returncode, lines, stderr = reports[backend]
    assert returncode == 0 and lines, stderr[-3000:]
    report = json.loads(lines[-1][len("PROBE "):])
    assert report["backend"] == backend
    return report


@pytest.mark.parametrize("backend", ["jax", "tensorflow", "torch"])
def test_outputs_equal_keras_conv3d(reports, backend):
    outputs = _report(reports, backend)["outputs"]
    data_formats = {"channels_last"} if backend == "tensorflow" else {"channels_last", "channels_first"}
    assert {key.split("/")[0] for key in outputs} == data_formats
    assert len(outputs) == len(data_formats) * (len(SHAPES) + 2)
    for key, row in outputs.items():
        assert row["shapes_equal"], key
        assert _within(row), (key, row)
        assert row["applies"] == ("fallback" not in key), "only kernel 4, stride 2, same takes the rearranged path"


def test_gradients_equal_keras_conv3d_on_jax(reports):
    gradients = _report(reports, "jax")["gradients"]
    assert len(gradients) == 4
    for key, row in gradients.items():
        for variable in ("kernel", "bias", "input"):
            assert _within(row[variable]), (key, variable, row[variable])


def test_mixed_precision_computes_in_bfloat16_from_float32_variables(reports):
    row = _report(reports, "jax")["bfloat16"]
    assert row["dtype"] == "bfloat16" and row["kernel_dtype"] == "float32"
    assert _within(row, BFLOAT16_TOLERANCE), row


@pytest.mark.parametrize("backend", ["jax", "tensorflow", "torch"])
def test_weight_files_round_trip_with_a_plain_discriminator(reports, backend):
    row = _report(reports, backend)["weights"]
    assert row["fast_format"] == ("channels_last" if backend == "tensorflow" else "channels_first")
    assert row["uses_space_to_depth"]
    assert row["same_file"], "the same layer names, weight names and arrays"
    for direction in ("from_plain", "to_plain"):
        assert _within(row[direction]), (direction, row[direction])


def test_only_the_strided_discriminator_layers_change():
    plain = build_discriminator(Config(discriminator_convolution="plain"))
    fast = build_discriminator(Config(discriminator_convolution="space_to_depth"))
    kinds = [type(layer) for layer in fast.layers if "conv" in layer.name]
    assert kinds == [SpaceToDepthConv3D] * 4 + [keras.layers.Conv3D]
    assert all(type(layer) is keras.layers.Conv3D for layer in plain.layers if "conv" in layer.name)
    assert [layer.name for layer in fast.layers] == [layer.name for layer in plain.layers]
    assert [(v.path, tuple(v.shape)) for v in fast.weights] == [(v.path, tuple(v.shape)) for v in plain.weights]
    assert fast.count_params() == plain.count_params()


def test_layer_serializes_as_itself():
    layer = SpaceToDepthConv3D(64, 4, strides=2, padding="same", name="first")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is SpaceToDepthConv3D and restored.get_config() == layer.get_config()


def test_auto_is_space_to_depth_on_jax_only_and_unknown_values_are_refused():
    expected = "space_to_depth" if keras.backend.backend() == "jax" else "plain"
    assert Config().discriminator_convolution == "auto" and resolve_discriminator_convolution(Config()) == expected
    assert resolve_discriminator_convolution(Config(discriminator_convolution="plain")) == "plain"
    assert resolve_discriminator_convolution(Config(discriminator_convolution="space_to_depth")) == "space_to_depth"
    message = r"^config field discriminator_convolution = 'fast' must be auto, plain or space_to_depth$"
    with pytest.raises(ConfigError, match=message):
        Config(discriminator_convolution="fast")


def test_config_files_that_call_it_first_convolution_still_load(tmp_path):
    path = tmp_path / "config.json"
    values = Config(discriminator_convolution="plain").to_dict()
    values["first_convolution"] = values.pop("discriminator_convolution")
    path.write_text(json.dumps(values))
    assert Config.load(str(path)) == Config(discriminator_convolution="plain")


def test_train_flag_sets_the_discriminator_convolution():
    from threedgan.cli import config_from_train_arguments, train_parser

    arguments = train_parser().parse_args(["--discriminator-convolution", "space_to_depth"])
    assert config_from_train_arguments(arguments).discriminator_convolution == "space_to_depth"
    assert config_from_train_arguments(train_parser().parse_args([])).discriminator_convolution == "auto"
    with pytest.raises(SystemExit) as exit_info:
        train_parser().parse_args(["--discriminator-convolution", "fast"])
    assert exit_info.value.code == 2


if __name__ == "__main__":
    print("PROBE " + json.dumps(run_probe(sys.argv[1])))
