"""The PyTorch backend's fast paths compute what Keras' own code computes.

- `threedgan.models.BatchNormalization` in training mode runs through `torch.native_batch_norm` there (channels-last
  5-D inputs as 4-D, which PyTorch's channels-last kernels take): outputs,
  input gradients, second derivatives (R1 differentiates an input gradient again) and the moving averages must equal
  BatchNorm's definition with batch statistics and Keras' moving averages (float64, CPU).
- `threedgan.training_step._torch_adam_apply` is Keras' Adam update without host synchronisations: the weights, the
  optimizer's variables and its iteration count must equal `keras.optimizers.Adam.apply`'s after several steps.
- `threedgan.models.PaddedConv3DTranspose` (the generator's stride-2 layers on PyTorch) passes `padding=1` to
  `conv_transpose3d` where Keras crops an unpadded output: outputs and the gradients of inputs, kernel and bias must
  equal Keras' `Conv3DTranspose`'s from the same variables, in both layouts, and on other settings it is Keras' layer.
- `threedgan.training_step.to_device` turns host arrays into tensors and passes tensors through.

Run as a script with KERAS_BACKEND=torch (`python tests/test_torch_fast_paths.py`), this file is the probe: it prints
one `PROBE {json}` line. The whole training step on torch is compared with JAX and TensorFlow in
`test_training_step.py`.
"""
import importlib.util
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TOLERANCE = 1e-10  # float64


def _probe():
    import keras
    import torch

    from threedgan.models import BatchNormalization, PaddedConv3DTranspose
    from threedgan.training_step import _adam_without_extras, _torch_adam_apply, to_device

    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    report = {"backend": keras.backend.backend(), "batchnorm": {}}
    calls = []
    native = torch.native_batch_norm
    torch.native_batch_norm = lambda *arguments: calls.append(arguments[0].ndim) or native(*arguments)

    def definition(layer, inputs):
        """BatchNorm in training mode as written in the paper (Ioffe & Szegedy 2015), in plain PyTorch arithmetic.
        Not Keras' torch ops: their `mean` is off by ~1e-7 even in float64."""
        axis = layer.axis % inputs.ndim
        axes = [a for a in range(inputs.ndim) if a != axis]
        shape = [1] * inputs.ndim
        shape[axis] = inputs.shape[axis]
        mean = inputs.mean(dim=axes, keepdim=True)
        variance = ((inputs - mean) ** 2).mean(dim=axes, keepdim=True)
        outputs = (inputs - mean) / torch.sqrt(variance + layer.epsilon) * layer.gamma.value.reshape(shape)
        outputs = outputs + layer.beta.value.reshape(shape)
        for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            moving.assign(moving.value * layer.momentum + batch.detach().reshape(-1) * (1 - layer.momentum))
        return outputs

    for axis, shape in ((-1, (4, 5, 3, 6, 3)), (1, (4, 3, 5, 3, 6)), (-1, (8, 5))):
        ours, theirs = BatchNormalization(axis=axis, momentum=0.9), BatchNormalization(axis=axis, momentum=0.9)
        ours.build(shape)
        theirs.build(shape)
        for layer in (ours, theirs):
            layer.gamma.assign(np.linspace(0.5, 1.5, layer.gamma.shape[0]))
            layer.beta.assign(np.linspace(-0.2, 0.3, layer.beta.shape[0]))
        x = torch.tensor(rng.normal(2.0, 3.0, shape))
        weights = torch.tensor(rng.normal(size=shape))
        rows = {}
        results = []
        for layer, call in ((ours, lambda inputs: ours(inputs, training=True)), (theirs, lambda inputs: definition(theirs, inputs))):
            inputs = x.clone().requires_grad_(True)
            outputs = call(inputs)
            (gradient,) = torch.autograd.grad((outputs * weights).sum(), inputs, create_graph=True)
            second = torch.autograd.grad((gradient**2).sum(), [inputs, layer.gamma.value])
            results.append([outputs, gradient, *second, layer.moving_mean.value, layer.moving_variance.value])
        names = ("outputs", "input_gradient", "second_input", "second_gamma", "moving_mean", "moving_variance")
        for name, a, b in zip(names, *results):
            rows[name] = float((a.detach() - b.detach()).abs().max() / max(1.0, float(b.detach().abs().max())))
        report["batchnorm"][f"axis{axis}_{len(shape)}d"] = rows
    report["native_calls"] = calls
    torch.native_batch_norm = native

    variables = [keras.Variable(rng.normal(size=shape)) for shape in ((3, 4), (5,))]
    copies = [keras.Variable(keras.ops.convert_to_numpy(v)) for v in variables]
    keras_adam = keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.99)
    our_adam = keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.99)
    keras_adam.build(variables)
    our_adam.build(copies)
    for _ in range(5):
        gradients = [torch.tensor(rng.normal(size=tuple(v.shape))) for v in variables]
        keras_adam.apply(gradients, variables)
        _torch_adam_apply(our_adam, [g.clone() for g in gradients], copies)
    report["adam"] = dict(
        weights=max(float(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b)).max()) for a, b in zip(variables, copies)),
        optimizer=max(float(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b)).max())
                      for a, b in zip(keras_adam.variables, our_adam.variables)),
        iterations=[int(keras.ops.convert_to_numpy(keras_adam.iterations)), int(keras.ops.convert_to_numpy(our_adam.iterations))],
        plain=_adam_without_extras(our_adam),
        clipped=_adam_without_extras(keras.optimizers.Adam(clipnorm=1.0)),
        amsgrad=_adam_without_extras(keras.optimizers.Adam(amsgrad=True)),
    )
    report["transposed"] = {}
    paddings = []
    conv_transpose3d = torch.nn.functional.conv_transpose3d
    torch.nn.functional.conv_transpose3d = lambda *arguments, **options: (
        paddings.append(options.get("padding")) or conv_transpose3d(*arguments, **options))
    for data_format, shape in (("channels_first", (2, 3, 5, 4, 6)), ("channels_last", (2, 5, 4, 6, 3))):
        for strides, padding in ((2, "same"), (1, "same"), (2, "valid")):
            options = dict(strides=strides, padding=padding, data_format=data_format, activation="tanh")
            ours, theirs = PaddedConv3DTranspose(4, 4, **options), keras.layers.Conv3DTranspose(4, 4, **options)
            ours.build(shape)
            theirs.build(shape)
            for source, target in zip((theirs.kernel, theirs.bias), (ours.kernel, ours.bias)):
                source.assign(rng.normal(size=tuple(source.shape)))
                target.assign(source.value)
            x = torch.tensor(rng.normal(size=shape))
            results = []
            for layer in (ours, theirs):
                inputs = x.clone().requires_grad_(True)
                outputs = layer(inputs)
                weights = torch.tensor(np.random.default_rng(1).normal(size=tuple(outputs.shape)))
                differentiated = [inputs, layer.kernel.value, layer.bias.value]
                gradients = torch.autograd.grad((outputs * weights).sum(), differentiated)
                results.append([outputs, *gradients])
            rows = {name: float((a - b).abs().max() / max(1.0, float(b.abs().max())))
                    for name, a, b in zip(("outputs", "input_gradient", "kernel_gradient", "bias_gradient"), *results)}
            rows["shape"] = list(results[0][0].shape)
            rows["paddings"], paddings[:] = list(paddings), []  # ours, then Keras'
            report["transposed"][f"{data_format}_stride{strides}_{padding}"] = rows
    torch.nn.functional.conv_transpose3d = conv_transpose3d
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_device(host)
    report["to_device"] = dict(is_tensor=bool(torch.is_tensor(tensor)), equal=bool(np.array_equal(tensor.cpu().numpy(), host)),
                               passes_through=to_device(tensor) is tensor)
    print("PROBE " + json.dumps(report))


@pytest.fixture(scope="module")
def report():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    environment = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    process = subprocess.run([sys.executable, os.path.abspath(__file__)], env=environment, capture_output=True, text=True,
                             timeout=600)
    lines = [line for line in process.stdout.splitlines() if line.startswith("PROBE ")]
    assert process.returncode == 0 and lines, process.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE "):])


def test_batchnorm_equals_its_definition_to_second_derivatives(report):
    assert report["backend"] == "torch"
    # Each call of our layer in training mode goes through torch.native_batch_norm; the channels-last 5-D input (axis
    # -1, moved to axis 1 as a view) as 4-D, with depth and height merged, the channels-first one as it is.
    assert report["native_calls"] == [4, 5, 2]
    assert len(report["batchnorm"]) == 3
    for case, rows in report["batchnorm"].items():
        for name, difference in rows.items():
            assert difference <= TOLERANCE, (case, name, difference)


def test_adam_equals_keras_adam(report):
    adam = report["adam"]
    assert adam["weights"] <= TOLERANCE and adam["optimizer"] <= TOLERANCE, adam
    assert adam["iterations"] == [5, 5]
    assert adam["plain"] and not adam["clipped"] and not adam["amsgrad"], "only a plain Adam takes the fast path"


def test_padded_transposed_convolution_equals_keras(report):
    cases = report["transposed"]
    assert len(cases) == 6
    assert cases["channels_first_stride2_same"]["shape"] == [2, 4, 10, 8, 12]
    assert cases["channels_last_stride2_same"]["shape"] == [2, 10, 8, 12, 4]
    assert cases["channels_first_stride2_same"]["paddings"] == cases["channels_last_stride2_same"]["paddings"] == [1, 0]
    assert all(cases[case]["paddings"] == [0, 0] for case in cases if "stride2_same" not in case), "Keras' code there"
    for case, rows in cases.items():
        for name, difference in rows.items():
            assert name in ("shape", "paddings") or difference <= TOLERANCE, (case, name, difference)


def test_to_device(report):
    assert report["to_device"] == dict(is_tensor=True, equal=True, passes_through=True)


if __name__ == "__main__":
    _probe()
