"""benchmarks/torch_baseline.py, the plain-PyTorch baseline: the same networks as threedgan's, and a CPU smoke run."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_baseline.py"


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("torch_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_networks_match_threedgans(baseline):
    generator, discriminator = baseline.build_networks(torch)  # the smoke run below checks their shapes
    convolutions = [(type(m).__name__, tuple(m.weight.shape), m.stride, m.padding)
                    for m in list(generator) + list(discriminator) if isinstance(m, torch.nn.modules.conv._ConvNd)]  # fmt: skip
    assert convolutions == [
        ("ConvTranspose3d", (200, 512, 4, 4, 4), (1, 1, 1), (0, 0, 0)),
        ("ConvTranspose3d", (512, 256, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("ConvTranspose3d", (256, 128, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("ConvTranspose3d", (128, 64, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("ConvTranspose3d", (64, 1, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("Conv3d", (64, 1, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("Conv3d", (128, 64, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("Conv3d", (256, 128, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("Conv3d", (512, 256, 4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ("Conv3d", (1, 512, 4, 4, 4), (1, 1, 1), (0, 0, 0)),
    ]
    batchnorms = [m.num_features for m in list(generator) + list(discriminator) if isinstance(m, torch.nn.BatchNorm3d)]
    assert batchnorms == [512, 256, 128, 64, 64, 128, 256, 512]  # none after either network's last layer
    # threedgan's counts (README, test_models.py) include BatchNorm's moving mean and variance, buffers in PyTorch.
    assert baseline.parameter_count(generator) == 17_572_545 - 2 * (512 + 256 + 128 + 64)
    assert baseline.parameter_count(discriminator) == 11_051_713 - 2 * (64 + 128 + 256 + 512)


def test_stable_recipe_iteration_with_r1_and_average(baseline):
    trainer = baseline.Trainer(torch, "stable", 1, torch.device("cpu"), "float32", "contiguous")
    before = [average.clone() for average in trainer.average]
    loss = trainer.step()  # iteration 0 adds the R1 penalty
    assert torch.isfinite(loss) and trainer.iteration == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.average)), "G's average moved"


def test_cpu_smoke_run_prints_json(baseline, tmp_path, capsys):
    out = tmp_path / "baseline.jsonl"
    assert baseline.main(["--cpu", "--recipe", "chapter", "--json", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["impl"] == "torch-baseline" and result["recipe"] == "chapter" and result["batch"] == 1
    assert result["median_s"] > 0 and result["samples_per_s"] > 0 and result["device"] == "cpu"
    assert json.loads(out.read_text().splitlines()[-1]) == result


def test_bad_arguments_are_one_line(tmp_path):
    bad = subprocess.run([sys.executable, str(SCRIPT), "--batch", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: argument --batch: must be at least 1, got 0"]
