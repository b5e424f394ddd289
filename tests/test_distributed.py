"""Data-parallel training (`threedgan.distributed`, JAX): two devices train the same model as one device.

`tests/distributed_probe.py` runs in its own process because XLA reads `XLA_FLAGS` once, when jax starts:
`--xla_force_host_platform_device_count=2` splits the CPU into two devices. From the same weights, batches and
latents, a few steps with a global batch of 4 on one device and on two (2 volumes each) must give the same losses and
the same variables, BatchNorm moving statistics included.

Tolerance: rtol 1e-4 / atol 1e-5 on losses and atol 1e-5 on variables (measured: ~6e-7 on losses, 1.2e-7 on
variables after 3 SGD steps: float32 reordering of the all-reduced sums). Unsynchronised BatchNorm, which normalises
each replica's half batch on its own, moves D's first loss by ~1e-2 here, so agreement within 1e-5 shows that
BatchNorm's statistics are those of the global batch.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from threedgan.config import Config
from threedgan.errors import ConfigError

PROBE = os.path.join(os.path.dirname(__file__), "distributed_probe.py")


def run_probe(*arguments):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    environment = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run([sys.executable, PROBE, *arguments], capture_output=True, text=True, env=environment, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE "):])


@pytest.fixture(scope="module")
def jax_report():
    return run_probe("3", "sgd")


def test_two_devices_match_one_device(jax_report):
    np.testing.assert_allclose(jax_report["two_device_losses"], jax_report["one_device_losses"], rtol=1e-4, atol=1e-5)
    assert jax_report["max_abs_weight_difference"] <= 1e-5


def test_batchnorm_is_synchronised(jax_report):
    # Per-replica statistics would put the losses ~1e-2 apart, three orders above the tolerance above.
    assert jax_report["per_replica_batchnorm_loss_difference"] > 100 * 1e-5


def test_variables_replicated_and_batch_sharded(jax_report):
    assert len(jax_report["devices"]) == 2
    assert jax_report["variables_replicated"] and jax_report["state_replicated"]
    for real, latents_fake, latents_generator, real_rows_per_device in jax_report["input_shardings"]:
        assert real == latents_fake == latents_generator == 2
        assert real_rows_per_device == [2, 2]


def test_trainer_on_two_devices_saves_the_one_device_weights(tmp_path):
    """`Trainer` with `devices=2` (checkpoints included) writes the same weights files as one device.

    The loop trains with Adam, which moves each weight by about the learning rate whatever the gradient's size. A
    Dense bias right before BatchNorm has a gradient of exactly zero in exact arithmetic (BatchNorm subtracts it), so
    its float32 noise, which differs between one and two devices, becomes steps of ±lr: those biases (which change
    nothing downstream) may differ by up to lr per update; everything else agrees within 1e-4 (measured: ~5e-5, on
    the moving mean that such a bias feeds).
    """
    report = run_probe("trainer", str(tmp_path))
    assert report["same_datasets"]
    updates = 2 * report["steps"]  # D is updated twice per iteration
    for name, difference in report["differences"].items():
        before_batchnorm = name.endswith("dense/bias:0") and "score" not in name
        assert difference <= (updates * report["learning_rate"] if before_batchnorm else 1e-4), name


def test_devices_config_validated():
    assert Config(devices=2).devices == 2
    assert Config().devices is None
    with pytest.raises(ConfigError, match="devices"):
        Config(devices=0)
