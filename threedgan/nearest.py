"""Nearest training shapes of generated ones: the paper's check that a GAN makes new shapes rather than copies.

3D-GAN's figure 3 puts each generated shape beside its nearest shapes in the training set. This module finds them by
IoU (`nearest_neighbours`), sums up how close samples come to the training set next to how close the held-out test
shapes come (`memorisation_summary`: a generator that copies has samples much closer to the training set than test
shapes are), and draws the sheet with matplotlib (`nearest_neighbour_sheet`).

Training shapes can stay on their own 32³ grid while samples are 64³: with `reference_zoom=2` each reference voxel
stands for the 2³ block the loader's ×2 zoom makes of it, and IoUs are exactly those of the zoomed grids at an eighth
of the memory. NumPy and matplotlib only: no deep-learning backend is needed.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Share of samples whose nearest training shape is closer than this percentile of the test shapes' nearest training
# shapes: about 5 % when samples are as new to the training set as held-out shapes are.
TEST_PERCENTILE = 95
# IoU from which a shape counts as a copy of a training shape.
COPY_IOU = 0.99


def iou_to_references(queries, references, threshold=0.5, reference_zoom=1, chunk_size=256):
    """IoU of every query shape with every reference shape.

    Args:
        queries: (n, D, H, W) or (n, D, H, W, 1) occupancy probabilities or 0/1 values.
        references: (m, D/z, H/z, W/z) or with a trailing channel of 1, on the query grid divided by
            `reference_zoom` (z).
        threshold: a voxel is occupied when its value is strictly greater.
        reference_zoom: how many query voxels a reference voxel spans along each axis (2 for 32³ training shapes
            against 64³ samples); the IoU is that of the references zoomed by repetition.
        chunk_size: references thresholded and multiplied at a time (memory: `chunk_size` float32 grids).

    Returns:
        float64 array (n, m) of IoUs in [0, 1]; two empty shapes have IoU 1.

    Raises:
        ValueError: the arrays are not sets of 3-D grids, or the grids do not match under `reference_zoom`.
    """
    zoom = int(reference_zoom)
    if zoom < 1 or zoom != reference_zoom:
        raise ValueError(f"reference_zoom must be a positive integer, got {reference_zoom!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    queries = _grids(queries, "queries")
    references = _grids(references, "references")
    expected = tuple(side * zoom for side in references.shape[1:])
    if queries.shape[1:] != expected:
        raise ValueError(
            f"queries on grid {queries.shape[1:]} do not match references on grid {references.shape[1:]} "
            f"zoomed {zoom}x ({expected})"
        )
    occupied = queries > threshold
    # Query voxels counted per reference voxel: intersections with a zoomed reference are then one matrix product.
    # Strided views added up are several times faster than a reshaped sum over three axes.
    blocks = np.zeros((len(occupied),) + references.shape[1:], dtype=np.float32)
    for offset in np.ndindex(zoom, zoom, zoom):
        blocks += occupied[:, offset[0]::zoom, offset[1]::zoom, offset[2]::zoom]
    blocks = blocks.reshape(len(blocks), -1)
    query_counts = occupied.reshape(len(occupied), -1).sum(axis=1, dtype=np.float64)
    ious = np.empty((len(queries), len(references)))
    for start in range(0, len(references), chunk_size):
        chunk = (references[start:start + chunk_size] > threshold).reshape(-1, blocks.shape[1]).astype(np.float32)
        intersections = (blocks @ chunk.T).astype(np.float64)
        unions = query_counts[:, None] + zoom**3 * chunk.sum(axis=1, dtype=np.float64)[None, :] - intersections
        ious[:, start:start + len(chunk)] = np.divide(
            intersections, unions, out=np.ones_like(intersections), where=unions > 0
        )
    return ious


def nearest_neighbours(queries, references, k=3, threshold=0.5, reference_zoom=1, chunk_size=256):
    """The `k` reference shapes with the highest IoU with each query shape.

    Args:
        queries: (n, D, H, W) or (n, D, H, W, 1) volumes, e.g. generated samples.
        references: (m, ...) volumes, e.g. the training set; see `iou_to_references` for grids and `reference_zoom`.
        k: neighbours per query (at most m are returned).
        threshold: occupancy threshold.
        reference_zoom: see `iou_to_references`.
        chunk_size: see `iou_to_references`.

    Returns:
        `(indices, ious)`: int64 (n, k) reference indices, nearest first, and their float64 (n, k) IoUs. Ties go to
        the lower reference index.

    Raises:
        ValueError: `k` is not positive, a set is empty, or the grids do not match.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    ious = iou_to_references(queries, references, threshold, reference_zoom, chunk_size)
    if 0 in ious.shape:
        raise ValueError(f"both sets must be non-empty, got {ious.shape[0]} queries and {ious.shape[1]} references")
    order = np.argsort(-ious, axis=1, kind="stable")[:, : int(k)]
    return order, np.take_along_axis(ious, order, axis=1)


def memorisation_summary(sample_nearest_iou, test_nearest_iou) -> dict:
    """Samples' IoU to their nearest training shape, set beside the same for held-out test shapes.

    Test shapes are new to the training set by construction, so their distribution is what "new" looks like for the
    category. Samples far closer to the training set than test shapes are (many above the test shapes' 95th
    percentile, or at IoU 1) are copies.

    Args:
        sample_nearest_iou: (n,) each sample's IoU with its nearest training shape.
        test_nearest_iou: (t,) each test shape's IoU with its nearest training shape.

    Returns:
        dict of floats: `nearest_train_iou_samples_{mean,median,max}`, `nearest_train_iou_test_{mean,median,p95,max}`,
        `samples_above_test_p95` (fraction of samples above the test shapes' 95th percentile; about 0.05 for
        samples as new as test shapes), `samples_copying` and `test_copying` (fractions at IoU ≥ 0.99 with a
        training shape: 3DShapeNets' test split itself repeats some training shapes, so `test_copying` is the
        data's own share of copies).

    Raises:
        ValueError: either set is empty.
    """
    samples = np.asarray(sample_nearest_iou, dtype=np.float64).ravel()
    tests = np.asarray(test_nearest_iou, dtype=np.float64).ravel()
    if samples.size == 0 or tests.size == 0:
        raise ValueError("memorisation_summary needs at least one sample and one test shape")
    test_p95 = float(np.percentile(tests, TEST_PERCENTILE))
    return {
        "nearest_train_iou_samples_mean": float(samples.mean()),
        "nearest_train_iou_samples_median": float(np.median(samples)),
        "nearest_train_iou_samples_max": float(samples.max()),
        "nearest_train_iou_test_mean": float(tests.mean()),
        "nearest_train_iou_test_median": float(np.median(tests)),
        "nearest_train_iou_test_p95": test_p95,
        "nearest_train_iou_test_max": float(tests.max()),
        "samples_above_test_p95": float(np.mean(samples > test_p95)),
        "samples_copying": float(np.mean(samples >= COPY_IOU)),
        "test_copying": float(np.mean(tests >= COPY_IOU)),
    }


def nearest_neighbour_sheet(
    samples,
    references,
    indices,
    ious,
    path,
    rows: Optional[Sequence[int]] = None,
    sample_labels: Optional[Sequence[str]] = None,
    reference_labels: Optional[Sequence[str]] = None,
    test_nearest_iou=None,
    title: Optional[str] = None,
    threshold: float = 0.5,
    image_size: int = 160,
):
    """Draws the paper's figure 3: each sample beside its nearest training shapes, with their IoUs.

    Every shape is rendered framed to itself (`threedgan.render.render_volume`). With `test_nearest_iou`, a last
    panel plots the distribution of the samples' IoU with their nearest training shape against the test shapes'.

    Args:
        samples: (n, D, H, W) volumes.
        references: the volumes `indices` point into (any grid; e.g. the 32³ training set).
        indices: (n, k) from `nearest_neighbours`.
        ious: (n, k) from `nearest_neighbours`.
        path: the PNG to write (its folder is created).
        rows: which samples to draw, in order; default all (keep it to about a dozen).
        sample_labels: one title a sample, e.g. `"sample:3"`; default `"sample N"`.
        reference_labels: one name a reference (e.g. the training files' names); default `"train N"`.
        test_nearest_iou: optional (t,) test shapes' IoU with their nearest training shape, for the last panel.
        title: figure title.
        threshold: occupancy threshold of the renders.
        image_size: pixels a rendered shape.

    Returns:
        `path`.

    Raises:
        ValueError: `indices` and `ious` disagree in shape with each other or with `samples`.
    """
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from threedgan.render import render_volume

    indices, ious = np.asarray(indices), np.asarray(ious)
    if indices.shape != ious.shape or indices.ndim != 2 or len(indices) != len(samples):
        raise ValueError(
            f"indices {indices.shape} and ious {ious.shape} must both be (n, k) with n = {len(samples)} samples"
        )
    rows = list(range(len(samples))) if rows is None else [int(row) for row in rows]
    k = indices.shape[1]
    with_distribution = test_nearest_iou is not None
    # Images are drawn on a Figure of its own (no pyplot): no global backend state, nothing shown on screen.
    cell = 1.55
    figure = Figure(
        figsize=(cell * (k + 1) + 0.6, cell * 1.15 * len(rows) + (2.4 if with_distribution else 0) + 0.4),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    heights = [1.0] * len(rows) + ([1.4] if with_distribution else [])
    grid = figure.add_gridspec(len(heights), k + 1, height_ratios=heights)

    def show(axis, volume, label, colour):
        axis.imshow(render_volume(volume, threshold=threshold, image_size=image_size, color=colour))
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.set_title(label, fontsize=8, pad=2)

    for position, row in enumerate(rows):
        label = sample_labels[row] if sample_labels is not None else f"sample {row}"
        show(figure.add_subplot(grid[position, 0]), samples[row], label, "#d6843b")
        for rank in range(k):
            index = int(indices[row, rank])
            name = reference_labels[index] if reference_labels is not None else f"train {index}"
            show(
                figure.add_subplot(grid[position, rank + 1]),
                references[index],
                f"{name}\nIoU {ious[row, rank]:.2f}",
                "#6b9fd6",
            )
    if with_distribution:
        _distribution_panel(figure.add_subplot(grid[len(rows), :]), ious[:, 0], np.asarray(test_nearest_iou))
    figure.suptitle(title or f"Generated shapes (orange) and their {k} nearest training shapes by IoU", fontsize=10)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _distribution_panel(axis, sample_nearest, test_nearest):
    bins = np.linspace(0.0, 1.0, 41)
    for values, label, colour in (
        (sample_nearest, "samples", "#d6843b"),
        (test_nearest, "test shapes (held out)", "#6b9fd6"),
    ):
        values = np.asarray(values, dtype=np.float64).ravel()
        axis.hist(
            values, bins=bins, weights=np.full(len(values), 100.0 / max(len(values), 1)), histtype="step",
            linewidth=1.8, color=colour, label=f"{label}: median {np.median(values):.2f} (n = {len(values)})",
        )
    p95 = np.percentile(test_nearest, TEST_PERCENTILE)
    above = 100.0 * np.mean(np.asarray(sample_nearest) > p95)
    axis.axvline(
        p95, color="#6b9fd6", linestyle="--", linewidth=1,
        label=f"test shapes' {TEST_PERCENTILE}th percentile ({p95:.2f}): {above:.0f} % of samples above",
    )
    axis.set_xlim(0, 1.0)
    axis.set_xlabel("IoU with the nearest training shape (1 = a copy)", fontsize=8)
    axis.set_ylabel("% of shapes", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7, loc="upper left", frameon=False)


def _grids(volumes, name):
    volumes = np.asarray(volumes)
    if volumes.ndim == 5 and volumes.shape[-1] == 1:
        volumes = volumes[..., 0]
    if volumes.ndim != 4:
        raise ValueError(f"{name} must be (n, D, H, W) or (n, D, H, W, 1), got shape {volumes.shape}")
    return volumes
