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
    nothing downstream) and the moving means they feed may differ by up to lr per update; everything else agrees
    within 1e-4.
    """
    report = run_probe("trainer", str(tmp_path))
    assert report["same_datasets"]
    updates = 2 * report["steps"]  # at most two D updates per iteration (the chapter's recipe)
    for name, difference in report["differences"].items():
        before_batchnorm = (name.endswith("dense/bias:0") and "score" not in name) or name.endswith("moving_mean:0")
        assert difference <= (updates * report["learning_rate"] if before_batchnorm else 1e-4), name


def test_devices_config_validated():
    assert Config(devices=2).devices == 2
    assert Config().devices is None
    with pytest.raises(ConfigError, match="devices"):
        Config(devices=0)


# TensorFlow: `tf.distribute.MirroredStrategy` (`threedgan.distributed.setup_mirrored`), two logical CPU devices.
# Without BatchNorm two replicas train exactly the one-device model (measured: 2e-8 on weights after 2 SGD steps), so
# the loss scaling and the optimizer's gradient all-reduce give the global batch's gradient. With BatchNorm each replica
# normalises its own half batch (per-replica, unsynchronised statistics): D's first loss is then exactly the mean of
# the two halves' losses, not the whole batch's (measured 0.95934 vs 0.96694), and the runs drift apart (~1e-2).


@pytest.fixture(scope="module")
def tf_report():
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    probe = os.path.join(os.path.dirname(__file__), "mirrored_probe.py")
    result = subprocess.run([sys.executable, probe, "2"], capture_output=True, text=True, env=environment, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE "):])


def test_tensorflow_mirrored_without_batchnorm_matches_one_device(tf_report):
    report = tf_report["no_batchnorm"]
    assert report["replicas"] == 2 and len(tf_report["logical_cpus"]) == 2
    np.testing.assert_allclose(report["two_device_losses"], report["one_device_losses"], rtol=1e-5, atol=1e-6)
    assert report["max_abs_weight_difference"] <= 1e-6
    assert report["replicas_identical"]["trainable"]


def test_tensorflow_mirrored_batchnorm_is_per_replica(tf_report):
    report = tf_report["batchnorm"]
    first_loss = report["two_device_losses"][0][0]
    np.testing.assert_allclose(first_loss, report["per_replica_first_loss"], rtol=1e-5)
    assert abs(first_loss - report["one_device_losses"][0][0]) > 1e-3  # not the global batch's statistics
    assert report["replicas_identical"]["trainable"]
    # Same model up to BatchNorm's per-replica statistics: a few SGD steps stay within a few 1e-2.
    np.testing.assert_allclose(report["two_device_losses"], report["one_device_losses"], atol=0.15)
    assert report["max_abs_weight_difference"] <= 0.05
