"""A TensorBoard event writer that works on every Keras backend, with or without TensorFlow installed.

`keras.callbacks.TensorBoard` needs TensorFlow even on JAX or PyTorch; this writer needs only the `tensorboard`
package: it builds the event protocol buffers itself and writes them with TensorBoard's own `EventFileWriter`,
which falls back to a pure-Python file layer when TensorFlow is absent. Only `graph` needs TensorFlow, because a
graph is a TensorFlow `GraphDef`; on other backends it does nothing (`graphs_supported()` says so beforehand, so
callers need not create an empty run folder for it). Meshes (`mesh`, TensorBoard's MESH tab) and hyper-parameters
(`hparams`, the HPARAMS tab) are written as the plugins' own protocol buffers, which need no TensorFlow either.

Why not `tensorboardX`, which writes the same events without TensorFlow: it would be one more dependency for four
small methods, and this writer already uses TensorBoard's own metadata helpers (`plugins.text`, `plugins.mesh`,
`plugins.hparams`), so the events are exactly what TensorBoard's summary ops write.

Example:

    with SummaryWriter("runs/chair/logs") as writer:
        writer.scalars({"generator": 0.7, "discriminator": 0.6}, step=10, prefix="loss")
        writer.image("samples", render_grid(volumes), step=10)
"""

from __future__ import annotations

import os
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.mesh import metadata as mesh_metadata
from tensorboard.plugins.mesh import plugin_data_pb2 as mesh_plugin_data
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from threedgan.render import encode_png


class SummaryWriter:
    """Writes scalars, images, text and model graphs to a TensorBoard event file.

    Each writer creates a new `events.out.tfevents.*` file in `logdir`; TensorBoard merges all files of a folder.
    Events are queued and written by a background thread, so call `flush()` (or `close()`, or use the writer as a
    context manager) before reading the file.

    Args:
        logdir: the folder to write to; created if missing.
        flush_seconds: how often the background thread writes queued events to disk.
        max_queue_size: how many events may wait in the queue before a write call blocks until they are written.

    Raises:
        ValueError: `logdir` is empty.
    """

    def __init__(self, logdir, flush_seconds=120, max_queue_size=10):
        logdir = os.fspath(logdir)
        if not logdir:
            raise ValueError("SummaryWriter needs a logdir")
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir
        self._writer = EventFileWriter(logdir, max_queue_size=max_queue_size, flush_secs=flush_seconds)
        self._closed = False

    @property
    def logdir(self):
        """The folder this writer writes to."""
        return self._logdir

    def scalar(self, tag, value, step):
        """Records one scalar.

        Args:
            tag: the chart's name, e.g. `"loss/generator"`.
            value: a Python number, NumPy scalar or a one-element tensor of any backend.
            step: the training step (x axis).

        Raises:
            ValueError: the writer is closed, or `value` has more than one element.
        """
        summary_value = summary_pb2.Summary.Value(tag=tag, simple_value=_to_float(value, tag))
        self._add(summary_pb2.Summary(value=[summary_value]), step)

    def scalars(self, values, step, prefix=""):
        """Records several scalars at one step.

        Args:
            values: a mapping from tag to value.
            step: the training step.
            prefix: put before every tag, joined with `/` (so `prefix="loss"` turns `"generator"` into
                `"loss/generator"`); TensorBoard groups charts by the part before the first `/`.

        Raises:
            ValueError: the writer is closed, or a value has more than one element.
        """
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        summary_values = [
            summary_pb2.Summary.Value(tag=f"{prefix}{tag}", simple_value=_to_float(value, f"{prefix}{tag}"))
            for tag, value in values.items()
        ]
        if summary_values:
            self._add(summary_pb2.Summary(value=summary_values), step)

    def image(self, tag, image, step):
        """Records one image, PNG-encoded.

        Args:
            tag: the image's name.
            image: `uint8` array of shape `(height, width, 3)`; `(height, width)` and `(height, width, 4)` also work.
            step: the training step.

        Raises:
            ValueError: the writer is closed, or `image` is not a `uint8` array of a supported shape.
        """
        image = np.asarray(image)
        encoded = encode_png(image)
        channels = 1 if image.ndim == 2 else int(image.shape[2])
        summary_image = summary_pb2.Summary.Image(
            height=int(image.shape[0]), width=int(image.shape[1]), colorspace=channels, encoded_image_string=encoded
        )
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=summary_image)]), step)

    def text(self, tag, text, step):
        """Records a piece of text (Markdown), shown in TensorBoard's Text tab.

        Args:
            tag: the text's name.
            text: a string.
            step: the training step.

        Raises:
            ValueError: the writer is closed.
        """
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            string_val=[str(text).encode("utf8")],
        )
        summary_value = summary_pb2.Summary.Value(
            tag=tag, metadata=text_metadata.create_summary_metadata(display_name=tag, description=""), tensor=tensor
        )
        self._add(summary_pb2.Summary(value=[summary_value]), step)

    def mesh(self, tag, vertices, faces, step, colors=None, description=None):
        """Records one triangle mesh, shown (rotatable) in TensorBoard's MESH tab.

        Written as TensorBoard's mesh plugin writes it (`tensorboard.plugins.mesh.summary_v2.mesh`): one tensor per
        component, tagged `<tag>_VERTEX`, `<tag>_FACE` and `<tag>_COLOR`, each with the plugin's metadata.

        Args:
            tag: the mesh's name.
            vertices: float array (N, 3) of coordinates, or (B, N, 3) for B meshes of equal size.
            faces: integer array (F, 3) (or (B, F, 3)) of vertex indices, one row a triangle.
            step: the training step.
            colors: optional uint8 array (N, 3) (or (B, N, 3)) of per-vertex RGB colours.
            description: optional Markdown shown with the mesh.

        Raises:
            ValueError: the writer is closed, or the arrays have the wrong shapes or a face names a missing vertex.
        """
        components = [
            (mesh_plugin_data.MeshPluginData.VERTEX, _batched(vertices, np.float32, "vertices"), types_pb2.DT_FLOAT),
            (mesh_plugin_data.MeshPluginData.FACE, _batched(faces, np.int32, "faces"), types_pb2.DT_INT32),
        ]
        if colors is not None:
            components.append(
                (mesh_plugin_data.MeshPluginData.COLOR, _batched(colors, np.uint8, "colors"), types_pb2.DT_UINT8)
            )
        vertex_array, face_array = components[0][1], components[1][1]
        if face_array.size and (face_array.min() < 0 or face_array.max() >= vertex_array.shape[1]):
            raise ValueError(f"mesh {tag}: faces name vertices outside 0..{vertex_array.shape[1] - 1}")
        if len({array.shape[0] for _, array, _ in components}) != 1 or (
            colors is not None and components[2][1].shape[1] != vertex_array.shape[1]
        ):
            raise ValueError(f"mesh {tag}: vertices, faces and colors must describe the same meshes")
        bitmask = mesh_metadata.get_components_bitmask([content_type for content_type, _, _ in components])
        values = []
        for content_type, array, dtype in components:
            summary_metadata = mesh_metadata.create_summary_metadata(
                tag, None, content_type, bitmask, list(array.shape), description, json_config="{}"
            )
            tensor = tensor_pb2.TensorProto(
                dtype=dtype,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in array.shape]
                ),
                tensor_content=array.tobytes(),
            )
            values.append(
                summary_pb2.Summary.Value(
                    tag=mesh_metadata.get_instance_name(tag, content_type), metadata=summary_metadata, tensor=tensor
                )
            )
        self._add(summary_pb2.Summary(value=values), step)

    def hparams(self, values, start_time=None):
        """Records the run's hyper-parameters for TensorBoard's HPARAMS tab (one session: this run folder).

        Args:
            values: a mapping from name to a `bool`, number or string; `None` becomes `"null"`, lists and tuples
                become comma-separated strings, anything else its `str`.
            start_time: the run's start, seconds since the epoch (default now).

        Raises:
            ValueError: the writer is closed.
        """
        cleaned = {}
        for name, value in values.items():
            if isinstance(value, np.generic):
                value = value.item()
            if value is None:
                value = "null"
            elif isinstance(value, (list, tuple)):
                value = ",".join(str(item) for item in value)
            elif not isinstance(value, (bool, int, float, str)):
                value = str(value)
            cleaned[str(name)] = value
        self._add(hparams_summary.hparams_pb(cleaned, start_time_secs=start_time), 0)

    @staticmethod
    def graphs_supported():
        """Whether `graph` can write anything on the active Keras backend (TensorFlow only)."""
        import keras

        return keras.backend.backend() == "tensorflow"

    def graph(self, model):
        """Records a Keras model's inference graph, shown in TensorBoard's Graphs tab.

        Only the TensorFlow backend has graphs: the model is traced as `model(x, training=False)` for inputs of the
        model's shapes with any batch size.

        Args:
            model: a built functional or sequential `keras.Model`.

        Returns:
            `True` if a graph was written, `False` on backends other than TensorFlow.

        Raises:
            ValueError: the writer is closed, or the model has no known inputs (e.g. an unbuilt subclassed model).
        """
        import keras  # Imported here so that writing scalars never pays for importing Keras.

        self._check_open()
        if keras.backend.backend() != "tensorflow":
            return False
        import tensorflow as tf

        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(f"model {model.name} has no known inputs; build it on a keras.Input first")
        specs = [tf.TensorSpec((None,) + tuple(tensor.shape[1:]), dtype=tensor.dtype) for tensor in inputs]

        def inference(*tensors):
            return model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)

        graph_def = tf.function(inference).get_concrete_function(*specs).graph.as_graph_def()
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), graph_def=graph_def.SerializeToString()))
        return True

    def flush(self):
        """Writes every queued event to disk."""
        if not self._closed:
            self._writer.flush()

    def close(self):
        """Flushes and closes the event file; later calls do nothing, later writes raise `ValueError`."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exception_type, exception, traceback):
        self.close()
        return False

    def _add(self, summary, step):
        self._check_open()
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def _check_open(self):
        if self._closed:
            raise ValueError(f"SummaryWriter for {self._logdir} is closed")


def _batched(array, dtype, name):
    """`array` as a contiguous (B, N, 3) array of `dtype`, adding the batch axis to an (N, 3) array."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"mesh {name} must have shape (N, 3) or (B, N, 3), got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def _to_float(value, tag):
    # np.asarray reads NumPy, JAX, TensorFlow and CPU PyTorch values alike; detach covers tensors needing grad.
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"scalar {tag} must have exactly one element, got shape {array.shape}")
    return float(array.reshape(()))
