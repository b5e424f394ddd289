"""Speed settings that must not change the model: the networks' layout (`data_format`), the generator's sub-pixel
transposed convolutions (`deconvolution`), and the XLA flag set on import.

`tests/layout_probe.py` runs on each installed backend in its own process and compares every layout against Keras'
channels-last `Conv3DTranspose` networks loaded from the same weight files.
"""
import importlib.util
import json
import os
import subprocess
import sys

import keras
import pytest

from threedgan.config import Config
from threedgan.errors import ConfigError
from threedgan.models import PaddedConv3DTranspose, SubpixelConv3DTranspose, build_generator
from threedgan.models import resolve_data_format, resolve_deconvolution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "layout_probe.py")
TOLERANCE = 1e-5  # float32 sums in another order


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_layouts_compute_the_same_networks(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    environment = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, PROBE, str(tmp_path)], capture_output=True, text=True, env=environment, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("PROBE "):])
    assert report["backend"] == backend

    layers = report["layers"]
    expected_layouts = {"channels_last"} if backend == "tensorflow" else {"channels_last", "channels_first"}
    assert {key.split("/")[0] for key in layers} == expected_layouts
    for key, row in layers.items():
        assert row["shapes_equal"], key
        assert row["difference"] <= TOLERANCE * max(1.0, row["scale"]), key
        assert row["uses_subpixel"] == key.endswith("same/2"), "only kernel 4, stride 2, same takes the sub-pixel path"

    networks = report["networks"]
    expected_networks = {"tensorflow": {"channels_last/subpixel"}, "jax": {"channels_first/subpixel"}}
    assert set(networks) == expected_networks.get(
        backend, {"channels_last/subpixel", "channels_first/transposed", "channels_first/subpixel"}
    )
    for key, row in networks.items():
        assert row["output_shape"] == [64, 64, 64, 1], key
        for part in ("generator", "discriminator", "features"):
            assert row[part] <= TOLERANCE, (key, part)
    if backend == "jax":
        assert report["jax_gradient"] <= 1e-6

    forward = report["forward"]
    assert forward["difference"] <= TOLERANCE and forward["repeatable"]
    assert forward["statistics_unchanged"] and forward["keras_call_moves_statistics"]
    assert forward["compiled"] == (backend == "jax"), "compiled once per model on JAX only"


def test_subpixel_generator_keeps_the_chapter_layers():
    transposed = build_generator(Config(deconvolution="transposed"))
    subpixel = build_generator(Config(deconvolution="subpixel"))
    kinds = [type(layer) for layer in subpixel.layers if "deconv" in layer.name]
    assert kinds == [keras.layers.Conv3DTranspose] + [SubpixelConv3DTranspose] * 4, "the stride-1 first block stays"
    kinds = [type(layer) for layer in transposed.layers if "deconv" in layer.name]
    assert kinds == [keras.layers.Conv3DTranspose] + [PaddedConv3DTranspose] * 4
    assert all(isinstance(layer, keras.layers.Conv3DTranspose) for layer in subpixel.layers if "deconv" in layer.name)
    assert [layer.name for layer in subpixel.layers] == [layer.name for layer in transposed.layers]
    assert [tuple(v.shape) for v in subpixel.weights] == [tuple(v.shape) for v in transposed.weights]
    assert subpixel.count_params() == transposed.count_params() == 17_572_545


def test_auto_choices_follow_the_backend():
    backend = keras.backend.backend()
    config = Config()
    assert config.data_format == "auto" and config.deconvolution == "auto"
    assert resolve_deconvolution(config) == ("subpixel" if backend == "jax" else "transposed")
    if backend != "torch":
        assert resolve_data_format(config) == "channels_last"
    assert resolve_data_format(Config(data_format="channels_first")) == "channels_first"
    assert resolve_deconvolution(Config(deconvolution="transposed")) == "transposed"


def test_unknown_speed_settings_are_refused_with_the_field_name():
    with pytest.raises(ConfigError, match=r"^config field data_format = 'nchw' must be auto, channels_last or channels_first$"):
        Config(data_format="nchw")
    with pytest.raises(ConfigError, match=r"^config field deconvolution = 'fast' must be auto, transposed or subpixel$"):
        Config(deconvolution="fast")


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, "--xla_gpu_force_conv_nhwc"),
        ("--xla_dump_to=/tmp/x", "--xla_dump_to=/tmp/x --xla_gpu_force_conv_nhwc"),
        ("--xla_gpu_force_conv_nhwc=false", "--xla_gpu_force_conv_nhwc=false"),
        ("--xla_gpu_force_conv_nchw", "--xla_gpu_force_conv_nchw"),
    ],
)
def test_measured_xla_flag_is_added_unless_the_user_chose(given, expected):
    environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    if given is not None:
        environment["XLA_FLAGS"] = given
    code = "import os, threedgan; print(os.environ['XLA_FLAGS'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == expected


def test_train_flags_set_the_speed_settings_and_resume_may_change_them():
    from threedgan.checkpoint import FIELDS_FREE_ON_RESUME
    from threedgan.cli import config_from_train_arguments, train_parser

    arguments = train_parser().parse_args(["--data-format", "channels_first", "--deconvolution", "subpixel"])
    config = config_from_train_arguments(arguments)
    assert (config.data_format, config.deconvolution) == ("channels_first", "subpixel")
    assert config_from_train_arguments(train_parser().parse_args([])).deconvolution == "auto"
    with pytest.raises(SystemExit) as exit_info:
        train_parser().parse_args(["--deconvolution", "fast"])
    assert exit_info.value.code == 2
    assert {"data_format", "deconvolution"} <= set(FIELDS_FREE_ON_RESUME)
