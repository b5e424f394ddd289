"""A TensorBoard event writer that works on every Keras backend, with or without TensorFlow installed.

`keras.callbacks.TensorBoard` needs TensorFlow even on JAX or PyTorch; this writer needs only the `tensorboard`
package: it builds the event protocol buffers itself and writes them with TensorBoard's own `EventFileWriter`,
which falls back to a pure-Python file layer when TensorFlow is absent. Only `graph` needs TensorFlow, because a
graph is a TensorFlow `GraphDef`; on other backends it does nothing.

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


def _to_float(value, tag):
    # np.asarray reads NumPy, JAX, TensorFlow and CPU PyTorch values alike; detach covers tensors needing grad.
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"scalar {tag} must have exactly one element, got shape {array.shape}")
    return float(array.reshape(()))
