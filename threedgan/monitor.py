"""Watching a run while it trains: shape metrics from fixed latents, `metrics.jsonl`, meshes and the run's record.

`TrainingMetrics` generates the same `config.metrics_samples` shapes (fixed latents, drawn from the run's seed) with
the sampling generator and measures them with `threedgan.metrics`:

- every `config.metrics_every_steps` steps: `occupancy` (mean fraction of occupied voxels) and `mean_pairwise_iou`
  (mean IoU over distinct pairs of samples: near 1 when the generator collapses to one shape, the collapse detector
  of `evaluate.py`);
- every `config.set_metrics_every_steps` steps also `mmd_iou`, `cov_iou` and `1nna_iou` (`threedgan.metrics`,
  distance 1 - IoU) against a fixed slice of `config.metrics_references` volumes of the training data (drawn from
  the run's seed; never the test split). The slice stays in training: the numbers say how well the samples fit the
  training distribution, as StyleGAN2-ADA's FID against the training set does (1-NNA well below 0.5 means the
  samples copy training shapes). Use `evaluate.py` on the test split for numbers to report.

The reference slice's own occupancy and mean pairwise IoU come with every evaluation (`reference_*`) as the level
to compare with. `MetricsLog` appends each evaluation as one JSON line to `<output_dir>/metrics.jsonl` (like
StyleGAN2-ADA's `metric-*.jsonl`), so a script can read them:

    [json.loads(line) for line in open("generated_volumes/metrics.jsonl")]

Cost: the generator's forward pass over the fixed latents plus one IoU matrix product on the host
(`samples × (samples + references) × 64³` multiply-adds); README "Watching a run" has the measured times.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from typing import Optional

import numpy as np

from threedgan.latent import sample_latents
from threedgan.metrics import iou_distance_matrix, mmd_cov, one_nna

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
# Offsets from `config.seed`: the image latents use seed + 1 (train.py); these draws must differ from both.
METRICS_LATENT_SEED_OFFSET = 2
REFERENCE_SEED_OFFSET = 3
THRESHOLD = 0.5
# TensorBoard meshes are made from the volume pooled to 32³: a quarter of the triangles of 64³, small enough to log
# every image interval, and still the shape (the 3DShapeNets data are 30³ grids zoomed ×2).
MESH_POOLING = 2


def _mean_pairwise_iou(distances: np.ndarray) -> float:
    """Mean IoU over distinct pairs, from a symmetric 1 - IoU matrix; NaN with fewer than 2 shapes."""
    if len(distances) < 2:
        return float("nan")
    upper = np.triu_indices(len(distances), k=1)
    return float(np.mean(1.0 - distances[upper]))


def generate_occupancy(generator, latents: np.ndarray, batch_size: int) -> np.ndarray:
    """The generator's shapes for `latents` as uint8 0/1 (n, 64, 64, 64), thresholded on the device.

    As `threedgan.models.generate_volumes` (batch statistics, BatchNorm averages untouched, chunks of `batch_size`,
    a short last chunk filled up from the start), but only a quarter of the bytes cross to the host.
    """
    import keras

    from threedgan.models import forward_without_side_effects

    outputs = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        count = len(chunk)
        if count < batch_size and len(latents) > count:
            chunk = np.concatenate([chunk, np.resize(latents, (batch_size - count, latents.shape[1]))])
        volumes = forward_without_side_effects(generator, keras.ops.convert_to_tensor(chunk))
        occupied = keras.ops.cast(keras.ops.greater(keras.ops.cast(volumes, "float32"), THRESHOLD), "uint8")
        outputs.append(keras.ops.convert_to_numpy(occupied)[:count, ..., 0])
    return np.concatenate(outputs)


class TrainingMetrics:
    """Shape metrics of a fixed set of samples, for TensorBoard and `metrics.jsonl` while training.

    Args:
        config: the run's `Config` (`metrics_*`, `set_metrics_every_steps`, `z_size`, `z_stddev`, `seed`,
            `batch_size`).
        dataset: the training volumes (`VoxelDataset`); the reference slice is drawn from them.
    """

    def __init__(self, config, dataset):
        self.config = config
        self.latents = sample_latents(
            config.metrics_samples, config.z_size, config.z_stddev, seed=config.seed + METRICS_LATENT_SEED_OFFSET
        )
        count = min(config.metrics_references, len(dataset))
        rng = np.random.default_rng(config.seed + REFERENCE_SEED_OFFSET)
        self.reference_indices = np.sort(rng.choice(len(dataset), size=count, replace=False))
        self._dataset = dataset
        self._references = None  # built on first use: uint8 (R, 64, 64, 64)
        self._reference_scores = None
        self._reference_distances = None
        self.seconds = 0.0  # spent in `evaluate`, all calls together
        self.evaluations = 0

    @property
    def enabled(self) -> bool:
        return bool(self.config.metrics_every_steps or self.config.set_metrics_every_steps)

    def due(self, step: int) -> tuple:
        """(any metrics due at `step`, the set metrics due at `step`)."""
        every, every_set = self.config.metrics_every_steps, self.config.set_metrics_every_steps
        set_due = bool(every_set) and step % every_set == 0
        return (bool(every) and step % every == 0) or set_due, set_due

    def _prepare_references(self) -> None:
        if self._references is not None:
            return
        from threedgan.data import upsample

        # The data's ×2 zoom to the networks' 64³, kept as uint8 (a quarter of float32).
        references = upsample(self._dataset.volumes32(self.reference_indices), dtype="uint8")
        self._references = references
        self._reference_distances = iou_distance_matrix(references, threshold=THRESHOLD)
        self._reference_scores = {
            "reference_occupancy": float(np.count_nonzero(references)) / references.size,
            "reference_mean_pairwise_iou": _mean_pairwise_iou(self._reference_distances),
        }

    def evaluate(self, generator, with_set_metrics: bool) -> dict:
        """Generates the fixed samples with `generator` and measures them: `measure(*generate(generator), ...)`."""
        return self.measure(*self.generate(generator), with_set_metrics)

    def generate(self, generator) -> tuple:
        """The accelerator's share of an evaluation: `(samples, seconds)`, the fixed samples as uint8 occupancy."""
        started = time.perf_counter()
        samples = generate_occupancy(generator, self.latents, self.config.batch_size)
        return samples, time.perf_counter() - started

    def measure(self, samples, generation_seconds: float, with_set_metrics: bool) -> dict:
        """The host's share: the metrics of `samples` (from `generate`). The training loop runs it on its host-work
        thread while the next steps train, so only `generate` holds up training.

        Returns:
            `occupancy`, `mean_pairwise_iou`, the reference slice's `reference_occupancy` and
            `reference_mean_pairwise_iou`, and with `with_set_metrics` also `mmd_iou`, `cov_iou` and `1nna_iou`;
            plus `samples`, `references` (counts) and `seconds` (this evaluation's time, generation included).
        """
        started = time.perf_counter()
        self._prepare_references()
        results = {"samples": len(samples), "references": len(self._references)}
        results["occupancy"] = float(np.count_nonzero(samples)) / samples.size
        if with_set_metrics:
            # One product gives both blocks: samples against samples and against the references.
            distances = iou_distance_matrix(samples, np.concatenate([samples, self._references]), threshold=THRESHOLD)
            sample_distances, cross_distances = distances[:, : len(samples)], distances[:, len(samples) :]
            scores = mmd_cov(cross_distances)
            results.update(
                mmd_iou=scores["mmd"],
                cov_iou=scores["cov"],
                **{"1nna_iou": one_nna(sample_distances, self._reference_distances, cross_distances)},
            )
        else:
            sample_distances = iou_distance_matrix(samples, threshold=THRESHOLD)
        results["mean_pairwise_iou"] = _mean_pairwise_iou(sample_distances)
        results.update(self._reference_scores)
        results["seconds"] = generation_seconds + time.perf_counter() - started
        self.seconds += results["seconds"]
        self.evaluations += 1
        return results


class MetricsLog:
    """`<output_dir>/metrics.jsonl`: one JSON object a line per evaluation, appended as training goes.

    Each line holds `run` (the TensorBoard run name), `step`, `epoch` (epochs done, fractional: step / steps per
    epoch), `time` (seconds since the epoch) and the metrics of `TrainingMetrics.evaluate`. A run resumed from a
    checkpoint first drops its own lines past the checkpoint's step (they are measured again), as TensorBoard drops
    the events after a restart's step.
    """

    def __init__(self, output_dir: str, run_name: str):
        self.path = os.path.join(output_dir, METRICS_FILENAME)
        self.run_name = run_name

    def append(self, step: int, epoch: float, metrics: dict) -> dict:
        record = {"run": self.run_name, "step": int(step), "epoch": round(float(epoch), 4)}
        record["time"] = round(time.time(), 3)
        record.update({name: _json_number(value) for name, value in metrics.items()})
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def drop_after(self, step: int) -> int:
        """Removes this run's lines with a step above `step`, and lines a kill cut short; returns how many."""
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as handle:
            lines = handle.read().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("run") == self.run_name and record.get("step", 0) > step:
                continue
            kept.append(line)
        dropped = len(lines) - len(kept)
        if dropped:
            temporary = self.path + ".tmp"
            with open(temporary, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))
            os.replace(temporary, self.path)
        return dropped


def read_metrics(path: str) -> list:
    """The records of a `metrics.jsonl` (or of the one in the folder `path`), skipping lines a kill cut short."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILENAME)
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN
    return value


def tensorboard_mesh(volume: np.ndarray, threshold: float = THRESHOLD) -> Optional[tuple]:
    """A shape as (vertices float32 (N, 3), faces int32 (F, 3), colors uint8 (N, 3)) for TensorBoard's MESH tab.

    The volume (indexed x, y, z with z up, as the renders and `threedgan.mesh`) is max-pooled by `MESH_POOLING`,
    meshed with marching cubes, centred, and turned to three.js' y-up axes; vertices are coloured by height.
    Returns `None` for a volume with nothing above `threshold`.
    """
    from skimage import measure

    occupied = np.asarray(volume) > threshold
    if occupied.ndim == 4:
        occupied = occupied[..., 0]
    if not occupied.any():
        return None
    side = occupied.shape[0] // MESH_POOLING
    pooled = occupied[: side * MESH_POOLING, : side * MESH_POOLING, : side * MESH_POOLING]
    pooled = pooled.reshape(side, MESH_POOLING, side, MESH_POOLING, side, MESH_POOLING).any(axis=(1, 3, 5))
    vertices, faces, _, _ = measure.marching_cubes(np.pad(pooled.astype(np.float32), 1), level=0.5)
    vertices = vertices - (side + 1) / 2.0  # centre the padded grid at the origin
    x, y, z = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    # z up → three.js' y up, keeping the handedness: (x, y, z) → (x, z, -y).
    vertices = np.stack([x, z, -y], axis=1).astype(np.float32)
    height = (z - z.min()) / max(float(np.ptp(z)), 1e-6)
    low, high = np.array([70, 110, 200], np.float32), np.array([250, 190, 90], np.float32)
    colors = (low + height[:, None] * (high - low)).astype(np.uint8)
    # marching_cubes orders triangles for a surface around higher values; three.js culls by winding: flip them.
    return vertices, faces[:, ::-1].astype(np.int32), colors


def run_record(config, precision: str, device: str, argv=None) -> dict:
    """What the run was: every config field, plus backend, precision, device, library versions and the command."""
    import keras

    record = dict(config.to_dict())
    record.update(
        backend=keras.backend.backend(),
        precision_resolved=precision,
        device=device,
        keras_version=keras.__version__,
        backend_version=_backend_version(keras.backend.backend()),
        python_version=platform.python_version(),
        numpy_version=np.__version__,
        threedgan_version=_threedgan_version(),
        command=" ".join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *(argv or sys.argv[1:])]),
    )
    return record


def record_markdown(record: dict) -> str:
    """The run's record as a Markdown table for TensorBoard's TEXT tab."""
    rows = ["| field | value |", "| --- | --- |"]
    for name in sorted(record):
        value = record[name]
        text = json.dumps(value) if not isinstance(value, str) else value
        rows.append(f"| {name} | `{text.replace('|', '/')}` |")
    return "\n".join(rows)


def _backend_version(backend: str) -> str:
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module is None:
        return "unknown"
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a version string is informative only
        return "unknown"


def _threedgan_version() -> str:
    import threedgan

    return getattr(threedgan, "__version__", "unknown")
