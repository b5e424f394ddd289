"""Tests for threedgan.tensorboard_writer: events TensorBoard reads back, with and without TensorFlow."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from threedgan.tensorboard_writer import SummaryWriter

REPOSITORY = Path(__file__).resolve().parents[1]


def load_events(logdir):
    # size_guidance 0 keeps every event; the default samples images down to a few per tag.
    accumulator = event_accumulator.EventAccumulator(
        str(logdir),
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.IMAGES: 0,
            event_accumulator.TENSORS: 0,
            event_accumulator.GRAPH: 0,
        },
    )
    accumulator.Reload()
    return accumulator


def gradient_image(height=20, width=30):
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    columns = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    return np.concatenate(
        [np.broadcast_to(rows, (height, width, 1)), np.broadcast_to(columns, (height, width, 1)),
         np.full((height, width, 1), 128, np.uint8)],
        axis=-1,
    )


def test_scalars_and_images_read_back(tmp_path):
    logdir = tmp_path / "logs" / "run"  # two missing levels: the writer creates them
    with SummaryWriter(logdir) as writer:
        writer.scalar("loss/generator", 0.75, step=1)
        writer.scalar("loss/generator", np.float32(0.5), step=2)
        writer.scalars({"generator": 1.25, "discriminator": keras.ops.convert_to_tensor(0.125)}, step=3, prefix="lr")
        writer.image("samples", gradient_image(), step=3)
        writer.text("notes", "trained on **chairs**", step=0)
    events = load_events(logdir)
    tags = events.Tags()
    assert {"loss/generator", "lr/generator", "lr/discriminator"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("loss/generator")] == [(1, 0.75), (2, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("lr/discriminator")] == [(3, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("lr/generator")] == [(3, 1.25)]
    (image,) = events.Images("samples")
    assert (image.step, image.width, image.height) == (3, 30, 20)
    assert image.encoded_image_string.startswith(b"\x89PNG")
    (text,) = events.Tensors("notes")
    assert text.tensor_proto.string_val == [b"trained on **chairs**"]


def test_every_image_is_kept(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        for step in range(6):
            writer.image("samples", gradient_image(8, 8 + step), step=step)
    images = load_events(tmp_path).Images("samples")
    assert [(image.step, image.width) for image in images] == [(step, 8 + step) for step in range(6)]


def test_flush_makes_events_readable_before_close(tmp_path):
    writer = SummaryWriter(tmp_path, flush_seconds=3600)
    writer.scalar("loss", 2.0, step=7)
    writer.flush()
    assert [(e.step, e.value) for e in load_events(tmp_path).Scalars("loss")] == [(7, 2.0)]
    writer.close()
    writer.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.scalar("loss", 1.0, step=8)


def test_rejects_bad_values(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="exactly one element"):
            writer.scalar("loss", np.zeros(3), step=0)
        with pytest.raises(ValueError, match="uint8"):
            writer.image("samples", np.zeros((4, 4, 3), np.float32), step=0)


def tiny_model():
    inputs = keras.Input(shape=(4,), name="features")
    x = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x), name="tiny")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="graphs exist on the TensorFlow backend only")
def test_graph_on_tensorflow(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        assert writer.graph(tiny_model()) is True
    events = load_events(tmp_path)
    assert events.Tags()["graph"] is True
    node_names = [node.name for node in events.Graph().node]
    assert any("hidden" in name for name in node_names)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="checks the non-TensorFlow backends")
def test_graph_is_skipped_on_other_backends(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        assert writer.graph(tiny_model()) is False
    assert load_events(tmp_path).Tags()["graph"] is False


WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError, as if it were not installed
    import numpy as np
    from threedgan.tensorboard_writer import SummaryWriter
    from tensorboard.backend.event_processing import event_accumulator

    logdir = sys.argv[1]
    with SummaryWriter(logdir) as writer:
        writer.scalar("loss", 0.25, step=4)
        writer.image("samples", np.full((5, 9, 3), 200, np.uint8), step=4)
        writer.mesh("mesh/box", np.zeros((3, 3)), np.array([[0, 1, 2]]), step=4)
        writer.hparams({"preset": "r1-ema", "batch_size": 32})
        import keras
        graphs_supported = writer.graphs_supported()
        graph_written = writer.graph(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    events = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.IMAGES: 0})
    events.Reload()
    (image,) = events.Images("samples")
    print(json.dumps({
        "backend": keras.backend.backend(),
        "graph_written": graph_written,
        "graphs_supported": graphs_supported,
        "tensors": sorted(events.Tags()["tensors"]),
        "scalars": [[e.step, e.value] for e in events.Scalars("loss")],
        "image": [image.step, image.width, image.height],
        "tensorflow_loaded": any(name.startswith("tensorflow.") for name in sys.modules),
    }))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax for a TensorFlow-free Keras backend")
def test_works_without_tensorflow(tmp_path):
    environment = dict(os.environ, KERAS_BACKEND="jax")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "backend": "jax",
        "graph_written": False,
        "graphs_supported": False,
        "tensors": ["_hparams_/session_start_info", "mesh/box_FACE", "mesh/box_VERTEX"],
        "scalars": [[4, 0.25]],
        "image": [4, 9, 5],
        "tensorflow_loaded": False,
    }


def test_mesh_and_hparams_read_back(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2 as hparams_plugin_data
    from tensorboard.plugins.mesh import metadata as mesh_metadata
    from tensorboard.util import tensor_util

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    colors = np.full((4, 3), 200, np.uint8)
    with SummaryWriter(tmp_path) as writer:
        writer.mesh("mesh/tetrahedron", vertices, faces, step=7, colors=colors, description="four faces")
        writer.hparams({"preset": "book", "batch_size": 32, "lr": np.float32(0.5), "categories": ["chair", "table"],
                        "max_steps": None, "skip_bad": False})  # fmt: skip
        with pytest.raises(ValueError, match="outside 0..3"):
            writer.mesh("bad", vertices, faces + 1, step=7)
        with pytest.raises(ValueError, match=r"\(N, 3\)"):
            writer.mesh("bad", vertices[:, :2], faces, step=7)
    events = load_events(tmp_path)
    assert sorted(tag for tag in events.Tags()["tensors"] if tag.startswith("mesh/")) == [
        "mesh/tetrahedron_COLOR", "mesh/tetrahedron_FACE", "mesh/tetrahedron_VERTEX"
    ]
    (event,) = events.Tensors("mesh/tetrahedron_VERTEX")
    assert event.step == 7
    np.testing.assert_array_equal(tensor_util.make_ndarray(event.tensor_proto), vertices[None].astype(np.float32))
    np.testing.assert_array_equal(tensor_util.make_ndarray(events.Tensors("mesh/tetrahedron_FACE")[0].tensor_proto), faces[None])
    np.testing.assert_array_equal(tensor_util.make_ndarray(events.Tensors("mesh/tetrahedron_COLOR")[0].tensor_proto), colors[None])
    parsed = mesh_metadata.parse_plugin_metadata(events.SummaryMetadata("mesh/tetrahedron_FACE").plugin_data.content)
    assert parsed.name == "mesh/tetrahedron" and list(parsed.shape) == [1, 4, 3] and parsed.components == 0b1110
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    values = hparams_plugin_data.HParamsPluginData.FromString(content).session_start_info.hparams
    assert values["preset"].string_value == "book" and values["batch_size"].number_value == 32
    assert values["lr"].number_value == 0.5 and values["categories"].string_value == "chair,table"
    assert values["max_steps"].string_value == "null" and values["skip_bad"].bool_value is False
