"""The training step: each recipe computes the same update on every backend, the paper's rule and the R1 pass touch
only what they should, and R1 has its closed form.

Each backend runs `tests/step_probe.py` once in its own process (Keras picks its backend at import) from weights and
batches drawn with NumPy; the results are compared here.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

PROBE = os.path.join(os.path.dirname(__file__), "step_probe.py")
BACKENDS = ("jax", "tensorflow", "torch")
SCENARIOS = ("chapter", "stable", "no_r1", "with_r1", "paper_rule_blocks", "paper_rule_allows")


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("step_probe")
    processes = {}
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            continue
        # float64 weights and activations: the backends then agree to rounding even after R1's double backward,
        # so an error of 1e-4 (TensorFlow's own BatchNorm moments gave 4e-4 there) cannot hide in float32 noise.
        environment = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", PROBE_FLOATX="float64",
                           JAX_ENABLE_X64="1")
        output = str(folder / f"{backend}.npz")
        processes[backend] = (subprocess.Popen([sys.executable, PROBE, output], env=environment, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True), output)
    results = {}
    for backend, (process, output) in processes.items():
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        results[backend] = dict(np.load(output))
    return results


def variables(report, scenario, when):
    count = int(report[f"{scenario}/counts"].sum())
    return [report[f"{scenario}/{when}/{index:03d}"] for index in range(count)]


def groups(report, scenario, when):
    """(generator, discriminator, generator average) variable lists."""
    generator, discriminator, _ = report[f"{scenario}/counts"]
    values = variables(report, scenario, when)
    return values[:generator], values[generator : generator + discriminator], values[generator + discriminator :]


def changed(report, scenario):
    return [[not np.array_equal(a, b) for a, b in zip(before, after)]
            for before, after in zip(groups(report, scenario, "before"), groups(report, scenario, "after"))]


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_one_step_is_the_same_on_every_backend(probes, backend, scenario):
    if backend not in probes or "jax" not in probes:
        pytest.skip(f"{backend} or jax is not installed")
    reference, other = probes["jax"], probes[backend]
    before, expected, actual = (variables(report, scenario, when) for report, when in
                                ((reference, "before"), (reference, "after"), (other, "after")))
    # Relative to the largest change the step made (a bias feeding BatchNorm has a zero gradient in exact
    # arithmetic, so its own change is rounding noise with no scale of its own); the losses are float32.
    scale = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, before))
    for index, (want, got) in enumerate(zip(expected, actual)):
        assert np.max(np.abs(got - want)) <= 1e-4 * scale, f"variable {index} of {scenario} differs on {backend}"
    for name in ("d_loss", "g_loss", "d_accuracy"):
        np.testing.assert_allclose(other[f"{scenario}/metric/{name}"], reference[f"{scenario}/metric/{name}"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_each_recipe_changes(probes, backend):
    if backend not in probes:
        pytest.skip(f"{backend} is not installed")
    report = probes[backend]
    for scenario in ("chapter", "stable", "paper_rule_allows"):
        generator, discriminator, average = changed(report, scenario)
        assert all(generator) and all(discriminator), scenario
        assert report[f"{scenario}/metric/d_updated"] == 1.0
    # The paper's rule: D's accuracy above the threshold skips D's update entirely (weights, statistics, moments).
    generator, discriminator, _ = changed(report, "paper_rule_blocks")
    assert all(generator) and not any(discriminator)
    assert report["paper_rule_blocks/metric/d_updated"] == 0.0
    # G's average moves, and with decay 0.5 after two steps it is neither G's start nor G's end.
    _, _, average = changed(report, "stable")
    assert all(average[: len(average) // 2 + 1])
    assert "r1_penalty" not in {key.split("/")[-1] for key in report if key.startswith("stable/metric")}, \
        "the last of the two iterations adds no penalty (interval 2), so reports none"
    assert float(report["with_r1/metric/r1_penalty"]) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_r1_moves_batchnorm_statistics_as_one_forward_pass(probes, backend):
    if backend not in probes:
        pytest.skip(f"{backend} is not installed")
    report = probes[backend]
    trainable = report["no_r1/trainable_flags"]
    _, without, _ = groups(report, "no_r1", "after")
    _, with_penalty, _ = groups(report, "with_r1", "after")
    generator_count = int(report["no_r1/counts"][0])
    statistics = [i for i in range(len(without)) if not trainable[generator_count + i]]
    assert statistics
    for index in statistics:
        np.testing.assert_allclose(with_penalty[index], without[index], rtol=1e-6, atol=1e-7)
    # ... while R1 does change D's weights.
    assert any(not np.allclose(with_penalty[i], without[i]) for i in range(len(without)) if i not in statistics)


@pytest.mark.parametrize("backend", BACKENDS)
def test_r1_against_its_closed_form(probes, backend):
    """D(x) = w·x + b: ∇ₓD = w, so R1 = γ/2‖w‖² and its gradient with respect to w is γw (a double backward)."""
    if backend not in probes:
        pytest.skip(f"{backend} is not installed")
    report = probes[backend]
    weight = report["r1/weight"]
    np.testing.assert_allclose(report["r1/penalty"], 0.5 * 10.0 * np.sum(weight**2), rtol=1e-5)
    np.testing.assert_allclose(report["r1/gradient"], 10.0 * weight, rtol=1e-5, atol=1e-5)


def test_cudnn_autotuning_only_where_cuda_is(monkeypatch):
    """The PyTorch backend's step asks cuDNN to time its convolution algorithms (same shapes every iteration), which
    made the step 1.48× faster on an H200; without CUDA the setting is left alone."""
    torch = pytest.importorskip("torch")
    from threedgan.training_step import enable_cudnn_autotuning

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    enable_cudnn_autotuning()
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    enable_cudnn_autotuning()
    assert torch.backends.cudnn.benchmark is True
