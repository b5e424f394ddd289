"""Nearest training shapes (the paper's figure 3): IoUs against a hand-computed reference, planted copies, the sheet,
and the evaluate flags that draw it and the metrics-against-ceiling figure. CPU only, tiny hand-made shapes."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from threedgan import data, evaluate
from threedgan.generate import save_packed_samples
from threedgan.metrics import iou_distance_matrix
from threedgan.nearest import iou_to_references, memorisation_summary, nearest_neighbour_sheet, nearest_neighbours


def random_shapes(count, side, seed, density=0.15):
    return (np.random.default_rng(seed).random((count, side, side, side)) < density).astype(np.uint8)


def test_ious_match_the_metrics_module_on_one_grid_and_on_a_zoomed_one():
    queries = random_shapes(5, 16, seed=0)
    references = random_shapes(7, 16, seed=1)
    expected = 1.0 - iou_distance_matrix(queries, references)
    np.testing.assert_allclose(iou_to_references(queries, references, chunk_size=3), expected, atol=1e-12)
    # 8³ references against 16³ queries: the IoU of the references zoomed ×2, without making the zoomed grids.
    coarse = random_shapes(6, 8, seed=2)
    zoomed = coarse.repeat(2, axis=1).repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_allclose(
        iou_to_references(queries, coarse, reference_zoom=2), 1.0 - iou_distance_matrix(queries, zoomed), atol=1e-12
    )
    with pytest.raises(ValueError, match="zoomed 3x"):
        iou_to_references(queries, coarse, reference_zoom=3)


def test_a_planted_copy_is_found_with_iou_1():
    train = random_shapes(30, 8, seed=3)
    samples = random_shapes(4, 16, seed=4)
    samples[2] = train[17].repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    indices, ious = nearest_neighbours(samples, train, k=3, reference_zoom=2)
    assert indices.shape == ious.shape == (4, 3)
    assert indices[2, 0] == 17 and ious[2, 0] == 1.0
    assert np.all(ious[[0, 1, 3], 0] < 0.5)  # independent random shapes overlap little
    assert np.all(np.diff(ious, axis=1) <= 0), "nearest first"
    summary = memorisation_summary(ious[:, 0], [0.3, 0.35, 0.4, 0.45])
    assert summary["samples_copying"] == 0.25 and summary["test_copying"] == 0.0
    assert summary["samples_above_test_p95"] == 0.25


def test_the_sheet_is_drawn(tmp_path):
    train = random_shapes(10, 8, seed=5, density=0.4)
    samples = random_shapes(3, 8, seed=6, density=0.4)
    indices, ious = nearest_neighbours(samples, train, k=2)
    path = nearest_neighbour_sheet(
        samples, train, indices, ious, str(tmp_path / "sheets" / "nn.png"), rows=[2, 0], test_nearest_iou=[0.2, 0.3],
        image_size=48,
    )  # fmt: skip
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height > image.width > 200  # two rows of three and a histogram
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        nearest_neighbour_sheet(samples, train, indices[:2], ious[:2], str(tmp_path / "bad.png"))


def test_evaluate_draws_the_sheet_and_the_figure_and_reports_the_numbers(tmp_path, volumetric_dir, capsys):
    from threedgan.data import load_dataset

    train = load_dataset(volumetric_dir, ["chair"], "train", "canonical", cache_dir=str(tmp_path / "cache"))
    copies = data.upsample(train.volumes32(), "uint8")  # every sample copies a training chair
    samples = save_packed_samples(copies, str(tmp_path / "samples.npz"), provenance={"categories": ["chair"]})
    out = tmp_path / "eval.json"
    status = evaluate.evaluate_main([
        "--samples", samples, "--category", "chair", "--data-dir", volumetric_dir, "--distances", "iou",
        "--nearest-sheet", str(tmp_path / "nn.png"), "--nearest-k", "2", "--figure", str(tmp_path / "fig.png"),
        "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    assert "samples at IoU >= 0.99 with a train shape" in captured.out and "warning" not in captured.err
    results = json.loads(out.read_text())
    assert results["nearest_train_iou_samples"] == [1.0, 1.0, 1.0] and results["samples_copying"] == 1.0
    assert results["nearest_train_names"] == [os.path.splitext(name)[0] for name in train.names]
    assert len(results["nearest_train_iou_test"]) == 3 and results["train_count"] == 3
    # The ceiling scores the same training chairs as samples: the same numbers as the copies.
    assert results["ceiling_mmd_iou"] == pytest.approx(results["mmd_iou"]) and results["ceiling_count"] == 3
    for name in ("nn.png", "fig.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
