"""End to end on a tiny data set: train.py leaves weights, config and TensorBoard events; generate.py uses them."""
import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from threedgan.cli import generate_main, train_main
from threedgan.config import DEFAULT_PRESET, PRESETS, Config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import write_tree

    root = tmp_path_factory.mktemp("run")
    data_dir = write_tree(str(root / "data"), categories={"chair": 0}, models=2, rotations=2)
    output_dir, logdir = str(root / "out"), str(root / "logs")
    status = train_main(
        [
            "--category", "chair", "--data-dir", data_dir, "--epochs", "2", "--batch-size", "2",
            "--max-samples", "4", "--output-dir", output_dir, "--logdir", logdir, "--run-name", "smoke",
            "--image-every-steps", "2", "--seed", "3", "--cache-dir", str(root / "cache"),
        ]
    )
    return status, output_dir, os.path.join(logdir, "smoke")


def test_training_writes_weights_config_and_events(trained_run):
    status, output_dir, run_logdir = trained_run
    assert status == 0
    assert {"generator_weights.h5", "discriminator_weights.h5", "config.json"} <= set(os.listdir(output_dir))
    config = Config.load(output_dir)
    assert config.categories == ["chair"] and config.batch_size == 2 and config.epochs == 2 and config.seed == 3
    # The default recipe, recorded beside the weights it made.
    assert config.preset == DEFAULT_PRESET and config.ema_decay == PRESETS[DEFAULT_PRESET]["ema_decay"] > 0

    events = EventAccumulator(run_logdir, size_guidance={IMAGES: 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for name in ("g_loss", "d_loss", "d_accuracy_real", "d_accuracy_fake"):
        assert f"step/{name}" in scalars and f"epoch/{name}" in scalars
    assert [e.step for e in events.Scalars("step/g_loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("epoch/d_loss")] == [1, 2]
    assert all(np.isfinite(e.value) for e in events.Scalars("step/d_loss"))
    images = events.Images("samples")
    assert len(images) >= 2 and images[0].width > 100
    for network in ("generator", "discriminator"):
        graph_events = EventAccumulator(os.path.join(run_logdir, f"graph_{network}"))
        graph_events.Reload()
        assert graph_events.Tags()["graph"], f"the TensorFlow backend also writes the {network}'s graph"


def test_weights_load_in_keras3_and_keras2(trained_run):
    _, output_dir, _ = trained_run
    from threedgan.generate import load_generator

    model = load_generator(os.path.join(output_dir, "generator_weights.h5"))
    assert model.config.z_stddev == 0.33 and model.generator.count_params() == 17_572_545
    import tf_keras

    layers = tf_keras.layers
    z = tf_keras.Input((200,))
    x = layers.Reshape((1, 1, 1, 200), name="z_as_volume")(z)
    for block, filters in enumerate((512, 256, 128, 64, 1), start=1):
        x = layers.Conv3DTranspose(
            filters, 4, strides=1 if block == 1 else 2, padding="valid" if block == 1 else "same",
            name=f"generator_deconv_{block}",
        )(x)
        if block < 5:
            x = layers.BatchNormalization(name=f"generator_batchnorm_{block}")(x)
            x = layers.Activation("relu")(x)
    keras2_generator = tf_keras.Model(z, x)
    keras2_generator.load_weights(os.path.join(output_dir, "generator_weights.h5"), by_name=True)
    import keras

    for ours, theirs in zip(model.generator.weights, keras2_generator.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours.value), theirs.numpy())


def test_generate_writes_volumes_and_renders_deterministically(trained_run, tmp_path):
    _, output_dir, _ = trained_run
    weights = os.path.join(output_dir, "generator_weights.h5")
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    assert generate_main(["--weights", weights, "--num", "3", "--output-dir", first, "--seed", "5"]) == 0
    assert generate_main(["--weights", weights, "--num", "3", "--output-dir", second, "--seed", "5"]) == 0
    files = sorted(os.listdir(first))
    assert files == ["latents.npy"] + [f"sample_{i:03d}.{ext}" for i in range(3) for ext in ("npy", "png")]
    for name in ("latents.npy", "sample_002.npy"):
        np.testing.assert_array_equal(np.load(os.path.join(first, name)), np.load(os.path.join(second, name)))
    latents = np.load(os.path.join(first, "latents.npy"))
    assert latents.shape == (3, 200) and 0.2 < latents.std() < 0.45, "drawn from the run's N(0, 0.33) prior"
    assert np.load(os.path.join(first, "sample_000.npy")).shape == (64, 64, 64)


def test_generate_interpolation_and_arithmetic(trained_run, tmp_path):
    _, output_dir, _ = trained_run
    weights = os.path.join(output_dir, "generator_weights.h5")
    out = str(tmp_path / "walk")
    argv = ["--weights", weights, "--interpolate", "seed:1", "seed:2", "--steps", "3", "--output-dir", out, "--format", "npy"]
    assert generate_main(argv) == 0
    assert {"interpolation_00.npy", "interpolation_02.npy", "interpolation_strip.png", "interpolation_latents.npy"} <= set(os.listdir(out))
    walk = np.load(os.path.join(out, "interpolation_latents.npy"))
    assert walk.shape == (3, 200)
    out2 = str(tmp_path / "sum")
    latents_file = os.path.join(out, "interpolation_latents.npy")
    argv = ["--weights", weights, "--arithmetic", f"{latents_file}:0", "seed:2", "sample:1", "--latents", latents_file,
            "--output-dir", out2, "--format", "npy"]  # fmt: skip
    assert generate_main(argv) == 0
    latents = np.load(os.path.join(out2, "arithmetic_latents.npy"))
    np.testing.assert_allclose(latents[3], latents[0] - latents[1] + latents[2], rtol=1e-6)
    np.testing.assert_array_equal(latents[0], walk[0])
    np.testing.assert_array_equal(latents[2], walk[1])  # sample:1 is row 1 of --latents


def test_generate_records_provenance_and_labels_its_pictures(trained_run, tmp_path, capsys):
    from threedgan.generate import read_provenance

    _, output_dir, _ = trained_run
    weights = os.path.join(output_dir, "generator_weights.h5")
    out = str(tmp_path / "s")
    argv = ["--weights", weights, "--num", "2", "--seed", "4", "--format", "npz,png", "--grid", "--views", "front,top",
            "--image-size", "64", "--output-dir", out]  # fmt: skip
    assert generate_main(argv) == 0
    facts = read_provenance(os.path.join(out, "samples.npz"))
    assert facts["categories"] == ["chair"] and facts["seed"] == 4 and facts["count"] == 2 and facts["mode"] == "sample"
    assert facts["weights"] == os.path.abspath(weights) and facts["threshold"] == 0.5 and facts["batchnorm"] == "batch"
    from PIL import Image

    with Image.open(os.path.join(out, "sample_000.png")) as image:
        assert image.width == 2 * 64 and image.height > 64  # two labelled views
    assert generate_main(["--weights", weights, "--interpolate", "3", "seed:1", "--output-dir", out]) == 2
    assert "ambiguous: write seed:3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data-dir", "/no/such/place"], "error: data path not found: /no/such/place"),
        (["--category", "plane"], "error: unknown category 'plane'"),
        (["--batch-size", "64"], "error: batch size 64 is larger than the data (6 volumes); pass a smaller --batch-size"),
        (["--config", "/no/config.json"], "error: config file not found: /no/config.json"),
    ],
)
def test_train_bad_arguments_give_one_line_and_exit_2(argv, message, volumetric_dir, tmp_path, capsys):
    base = ["--data-dir", volumetric_dir, "--category", "table", "--output-dir", str(tmp_path / "o"), "--logdir", str(tmp_path / "l"),
            "--cache-dir", str(tmp_path / "c")]
    assert train_main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)


def test_generate_bad_arguments(trained_run, tmp_path, capsys):
    _, output_dir, _ = trained_run
    weights = os.path.join(output_dir, "generator_weights.h5")
    assert generate_main(["--weights", str(tmp_path / "missing.h5")]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file not found: {tmp_path / 'missing.h5'}"
    assert generate_main(["--weights", weights, "--format", "npy,gif"]) == 2
    assert "unknown --format 'gif'" in capsys.readouterr().err
    lonely = tmp_path / "lonely.h5"
    lonely.write_bytes(open(weights, "rb").read())
    assert generate_main(["--weights", str(lonely)]) == 2
    assert "no config.json beside" in capsys.readouterr().err
    text = tmp_path / "g.h5"
    text.write_text("not weights")
    assert generate_main(["--weights", str(text), "--config", os.path.join(output_dir, "config.json")]) == 2
    assert "g.h5" in capsys.readouterr().err
    discriminator = os.path.join(output_dir, "discriminator_weights.h5")
    assert generate_main(["--weights", discriminator]) == 2
    assert "discriminator_weights.h5" in capsys.readouterr().err
