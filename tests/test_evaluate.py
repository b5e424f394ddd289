"""Evaluation: set metrics through `evaluate_generator` on hand-made sets with known answers, the CLI, and the
discriminator-feature classification path. CPU only; the data are tiny boxes written by the tests themselves."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from threedgan import data, evaluate
from threedgan.generate import save_packed_samples

ROOT = os.path.join(os.path.dirname(__file__), "..")
SIDE = 30  # 3DShapeNets' raw grid; the loader pads it to 32³ and zooms it to 64³


def box30(low, high):
    volume = np.zeros((SIDE,) * 3, dtype=np.uint8)
    volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = 1
    return volume


def as_generated(volumes30):
    """The 64³ grids the loader makes of 30³ volumes (pad by one, zoom ×2): what a perfect generator would draw."""
    return data.upsample(np.pad(np.asarray(volumes30), ((0, 0), (1, 1), (1, 1), (1, 1))), "uint8")


def random_boxes(count, seed, low_range=(2, 10), size_range=(6, 18)):
    """`count` distinct boxes from one distribution (as in conftest), a different draw for each seed."""
    rng = np.random.default_rng(seed)
    boxes, seen = [], set()
    while len(boxes) < count:
        low = rng.integers(*low_range, 3)
        high = np.minimum(low + rng.integers(*size_range, 3), SIDE)
        key = tuple(low) + tuple(high)
        if key not in seen:
            seen.add(key)
            boxes.append(box30(low, high))
    return np.stack(boxes)


def write_references(root, volumes30, category="chair", split="test"):
    folder = os.path.join(root, "volumetric_data", category, "30", split)
    os.makedirs(folder, exist_ok=True)
    for index, volume in enumerate(volumes30):
        scipy.io.savemat(os.path.join(folder, f"{category}_{index:04d}_1.mat"), {"instance": volume})
    return root


def packed(tmp_path, volumes64, name="samples.npz"):
    return save_packed_samples(volumes64, str(tmp_path / name))


def test_identical_sets_match_perfectly(tmp_path):
    references = random_boxes(6, seed=0)
    data = write_references(str(tmp_path / "data"), references)
    samples = packed(tmp_path, as_generated(references))
    results = evaluate.evaluate_generator(samples, "chair", data, distances=("iou", "chamfer"), points=64, cache_dir=str(tmp_path))
    for distance in ("iou", "chamfer"):
        assert results[f"mmd_{distance}"] == pytest.approx(0.0, abs=1e-12)
        assert results[f"cov_{distance}"] == 1.0
        # Not 50 %: the diagonal is excluded, so each shape's nearest other shape is its twin at distance 0 in the
        # other set, and the 1-NN classifier is wrong for every shape. Copying the references scores 0 %.
        assert results[f"1nna_{distance}"] == 0.0
    assert results["reference_count"] == results["sample_count"] == 6
    assert results["category"] == "chair" and results["sample_source"] == os.path.abspath(samples)


def test_two_draws_of_one_distribution_are_indistinguishable(tmp_path):
    data = write_references(str(tmp_path / "data"), random_boxes(40, seed=1))
    samples = packed(tmp_path, as_generated(random_boxes(40, seed=2)))
    results = evaluate.evaluate_generator(samples, "chair", data, distances=("iou",), cache_dir=str(tmp_path))
    # 80 shapes: the 1-NN accuracy of a coin flip has a standard deviation of about 6 points.
    assert 0.35 <= results["1nna_iou"] <= 0.65
    assert results["cov_iou"] > 0.3
    assert "mmd_chamfer" not in results


def test_disjoint_sets_are_separable(tmp_path):
    # References sit in one corner of the grid and samples in the opposite one: every cross-set IoU is 0.
    references = random_boxes(8, seed=3, low_range=(1, 4), size_range=(6, 10))
    data = write_references(str(tmp_path / "data"), references)
    samples = as_generated(random_boxes(8, seed=4, low_range=(17, 20), size_range=(6, 10)))
    results = evaluate.evaluate_generator(
        packed(tmp_path, samples), "chair", data, distances=("iou", "chamfer"), points=64, cache_dir=str(tmp_path)
    )
    assert results["1nna_iou"] == 1.0 and results["1nna_chamfer"] == 1.0
    assert results["mmd_iou"] == 1.0


def test_format_table_is_readable():
    table = evaluate.format_table({"mmd_iou": 0.25, "cov_iou": 0.5, "1nna_iou": 0.75, "category": "chair"})
    assert "MMD (1 - IoU)" in table and "50.00 %" in table and "75.00 %" in table and "chair" in table


def run_script(*arguments):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), *arguments], capture_output=True, text=True, timeout=120
    )


def test_script_on_samples_writes_json_and_tensorboard(tmp_path, volumetric_dir, capsys):
    samples = packed(tmp_path, as_generated(random_boxes(4, seed=5)))
    out = tmp_path / "eval.json"
    # In-process: scripts/evaluate.py only calls evaluate_main, and the shared-data test below runs the script itself.
    status = evaluate.evaluate_main([
        "--samples", samples, "--category", "table", "--data-dir", volumetric_dir, "--distances", "iou,chamfer",
        "--points", "64", "--json", str(out), "--logdir", str(tmp_path / "logs"), "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert status == 0
    assert "1-NNA (Chamfer)" in capsys.readouterr().out
    results = json.loads(out.read_text())
    expected = {"mmd_iou", "cov_iou", "1nna_iou", "mmd_chamfer", "cov_chamfer", "1nna_chamfer", "category",
                "reference_count", "sample_count", "sample_source", "sample_occupancy", "reference_occupancy"}  # fmt: skip
    assert expected <= set(results)
    assert results["reference_count"] == 3 and results["sample_count"] == 4  # 3 test tables, rotation _1 only
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs"))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--samples", "missing.npz", "--data-dir", "."], "file not found"),
        (["--classify", "modelnet10"], "--discriminator-weights"),
        (["--data-dir", "."], "--weights"),
    ],
)
def test_script_bad_input_is_one_line_exit_2(arguments, message, capsys):
    assert evaluate.evaluate_main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0]


def test_mismatched_category_and_too_few_samples_are_warned_about(tmp_path, volumetric_dir, capsys):
    # Two samples recorded as an airplane generator's, against the three canonical test chairs.
    samples = save_packed_samples(
        as_generated(random_boxes(2, seed=6)), str(tmp_path / "samples.npz"), provenance={"categories": ["airplane"]}
    )
    arguments = ["--samples", samples, "--category", "chair", "--data-dir", volumetric_dir, "--distances", "iou",
                 "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert evaluate.evaluate_main(arguments) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        "warning: the samples come from a generator trained on airplane, but the references are chair; "
        "pass --category airplane",
        "warning: 2 samples against 3 references: COV cannot exceed 67 %; generate at least 3 "
        "(scripts/generate.py --num 3 --format npz)",
    ]
    results = evaluate.evaluate_generator(samples, "chair", volumetric_dir, distances=("iou",), cache_dir=str(tmp_path))
    assert results["sample_provenance"]["categories"] == ["airplane"] and len(results["warnings"]) == 2
    assert evaluate.sample_warnings("chair", ["chair"], 3, 3) == []
    assert evaluate.sample_warnings("chair", ["all"], 3, 3) == []
    assert "records no provenance" in evaluate.sample_warnings("chair", None, 3, 3, provenance={})[0]


def test_feature_extractor_gives_the_papers_7168_features():
    from threedgan.config import Config
    from threedgan.models import build_discriminator

    volumes = (np.random.default_rng(0).random((3, 64, 64, 64)) > 0.7).astype(np.uint8)
    features = evaluate.discriminator_features(build_discriminator(Config()), volumes, batch_size=2)
    assert features.shape == (3, 7168) and features.dtype == np.float32 and np.isfinite(features).all()


def test_classification_runs_end_to_end(tmp_path, volumetric_dir):
    results = evaluate.classification_accuracy(
        None, None, volumetric_dir, ["chair", "table"], rotations="all", cache_dir=str(tmp_path)
    )
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["mean_class_accuracy"] <= 1.0
    assert results["train_count"] == results["test_count"] == 12  # 2 categories × 3 models × 2 rotations
    assert results["feature_size"] == 7168 and results["discriminator"] == "random (seed 0)"
    assert set(results["per_class_accuracy"]) == {"chair", "table"}


def test_linear_svm_separates_separable_features():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    features = rng.normal(size=(60, 50)) + 4.0 * np.eye(3)[labels] @ rng.normal(size=(3, 50))
    for solver in ("gram", "liblinear"):
        scores = evaluate.linear_classifier_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], C=1.0, solver=solver)
        assert scores["accuracy"] == 1.0


def test_modelnet40_means_the_categories_present():
    present = [name for name in evaluate.MODELNET40 if name not in ("car", "lamp")]
    names, missing = evaluate.resolve_categories("modelnet40", present)
    assert len(names) == 38 and missing == ["car", "lamp"]
    assert evaluate.resolve_categories("modelnet10", present)[0] == list(evaluate.MODELNET10)


def test_real_chairs_against_real_test_chairs(tmp_path, shared_zip):
    from threedgan.data import load_dataset

    train_chairs = load_dataset(shared_zip, ["chair"], "train", "canonical", max_samples=6, cache_dir=str(tmp_path))
    samples = packed(tmp_path, data.upsample(train_chairs.volumes32(), "uint8"))
    out = tmp_path / "chairs.json"
    completed = run_script(
        "--samples", samples, "--category", "chair", "--data-dir", shared_zip, "--max-references", "20",
        "--points", "256", "--json", str(out), "--cache-dir", str(tmp_path),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    results = json.loads(out.read_text())
    assert results["reference_count"] == 20 and results["sample_count"] == 6
    for key in ("mmd_iou", "cov_iou", "1nna_iou", "mmd_chamfer", "cov_chamfer", "1nna_chamfer"):
        assert np.isfinite(results[key]), key
    assert 0.0 < results["mmd_iou"] < 1.0  # real chairs overlap real chairs, but no train chair is a test chair


def test_generator_weights_make_as_many_samples_as_references(tmp_path, volumetric_dir):
    from threedgan.config import Config
    from threedgan.models import build_generator
    from threedgan.weights import save_weights_h5

    run = tmp_path / "run"
    config = Config(batch_size=4, mixed_precision="float32")
    config.save(str(run))
    save_weights_h5(build_generator(config), str(run / "generator_weights.h5"))
    results = evaluate.evaluate_generator(
        str(run / "generator_weights.h5"), "chair", volumetric_dir, distances=("iou",), cache_dir=str(tmp_path)
    )
    assert results["sample_count"] == results["reference_count"] == 3
    assert 0.0 <= results["1nna_iou"] <= 1.0
