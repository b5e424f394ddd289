"""The training step updates exactly the network it names, on every installed backend.

Each backend runs `tests/step_probe.py` in its own process (Keras picks its backend at import). The probe snapshots
every variable of both networks (weights and BatchNorm moving statistics) around one iteration.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

PROBE = os.path.join(os.path.dirname(__file__), "step_probe.py")
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def run_probe(backend, kind, *scenarios):
    if importlib.util.find_spec(BACKEND_MODULES[backend]) is None:
        pytest.skip(f"{backend} is not installed")
    environment = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, PROBE, kind, *scenarios], capture_output=True, text=True, env=environment, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("PROBE "):])
    assert report["backend"] == backend
    return report


def check(report):
    both = report["both"]
    assert both["generator_changed"] == both["generator_variables"]
    assert both["discriminator_changed"] == both["discriminator_variables"]
    # The D update leaves every generator variable bit-exact, BatchNorm moving statistics included, and vice versa.
    assert report["discriminator_only"]["generator_changed"] == 0
    assert report["discriminator_only"]["discriminator_changed"] == both["discriminator_variables"]
    assert report["generator_only"]["discriminator_changed"] == 0
    assert report["generator_only"]["generator_changed"] == both["generator_variables"]
    # The paper's rule: D's accuracy on the last batch above the threshold skips D's update entirely.
    assert report["paper_rule_blocks"]["discriminator_changed"] == 0
    assert report["paper_rule_blocks"]["metrics"]["d_updated"] == 0.0
    assert report["paper_rule_allows"]["discriminator_changed"] == both["discriminator_variables"]
    assert report["paper_rule_allows"]["metrics"]["d_updated"] == 1.0
    for name in ("d_loss", "g_loss", "d_accuracy_real", "d_accuracy_fake"):
        assert name in both["metrics"]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_each_update_changes_only_its_network(backend):
    check(run_probe(backend, "tiny"))


def test_chapter_networks_on_tensorflow():
    """The same isolation with the chapter's 64³ networks (TensorFlow runs them fastest on a CPU)."""
    report = run_probe("tensorflow", "chapter", "discriminator_only", "generator_only")
    assert report["discriminator_only"]["generator_changed"] == 0
    assert report["discriminator_only"]["discriminator_changed"] == report["discriminator_only"]["discriminator_variables"]
    assert report["generator_only"]["discriminator_changed"] == 0
    assert report["generator_only"]["generator_changed"] == report["generator_only"]["generator_variables"]
