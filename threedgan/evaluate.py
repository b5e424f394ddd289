"""Measuring what the GAN learned: sample quality against a reference set, and the discriminator as a shape descriptor.

Two measurements, both runnable on a CPU:

- `evaluate_generator`: generated shapes against a category's test shapes with the set metrics of
  `threedgan.metrics` (MMD, COV and 1-NNA under 1 - IoU and Chamfer distance), from generator weights or from a
  `samples.npz` written by `scripts/generate.py --format npz`.
- `classification_accuracy`: the paper's section 4.2 test of the discriminator's features. A linear SVM is trained
  on the max-pooled responses of conv layers 2-4 (7168 numbers a shape) of the train split and scored on the test
  split of ModelNet10 or ModelNet40. The paper reports 91.0 % (ModelNet10) and 83.3 % (ModelNet40) for a GAN trained
  on ShapeNet; `classification_accuracy(None, ...)` gives the randomly initialised discriminator's baseline.

With `evaluate_generator`'s options, also the paper's check against memorisation (each sample beside its nearest
training shapes, `threedgan.nearest`), the data's ceiling (training shapes scored as samples) and a matplotlib figure
of the metrics against it; `sample_warnings` flags comparisons that cannot show what they seem to.

`scripts/evaluate.py` (`evaluate_main`) is the command line for all of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from threedgan.data import upsample
from threedgan.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MODELNET10 = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet")
MODELNET40 = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)  # fmt: skip
DISTANCES = ("iou", "chamfer")
# Standardised 7168-dimensional features of a few thousand shapes are separable already; a small C keeps the SVM
# from fitting noise in them. 0.001 gave the trained discriminator 91.5 % on ModelNet10 (the paper: 91.0 %).
DEFAULT_SVM_C = 0.001


# ------------------------------------------------------------------------------------------------- sample quality


def reference_volumes(
    category: str,
    data_dir: Optional[str],
    split: str = "test",
    rotations: str = "canonical",
    max_references: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> np.ndarray:
    """Loads one category's reference shapes as uint8 (n, 64, 64, 64) of 0/1, the grid the generator draws on.

    Raises:
        DataError: see `threedgan.data.load_dataset`.
    """
    from threedgan.data import load_dataset

    dataset = load_dataset(
        data_dir, [category], split=split, rotations=rotations, max_samples=max_references, cache_dir=cache_dir
    )
    return upsample(dataset.volumes32(), "uint8")


def generated_volumes(weights: str, count: int, seed: int = 0, batch_statistics: bool = True, config_path=None):
    """Draws `count` shapes from a trained generator, with latents from the run's own prior.

    Returns:
        `(volumes, config)`: float32 (count, 64, 64, 64) occupancy probabilities and the run's `Config`.

    Raises:
        WeightsError, ConfigError: see `threedgan.generate.load_generator`.
    """
    from threedgan.generate import load_generator
    from threedgan.latent import sample_latents
    from threedgan.models import generate_volumes

    model = load_generator(weights, config_path)
    latents = sample_latents(count, model.config.z_size, model.config.z_stddev, seed=seed)
    volumes = generate_volumes(model.generator, latents, model.config.batch_size, batch_statistics=batch_statistics)
    return volumes, model.config


def evaluate_generator(
    weights_or_samples: str,
    category: str,
    data_dir: Optional[str],
    split: str = "test",
    rotations: str = "canonical",
    distances: Sequence[str] = DISTANCES,
    points: int = 2048,
    seed: int = 0,
    threshold: float = 0.5,
    batch_statistics: bool = True,
    max_references: Optional[int] = None,
    cache_dir: Optional[str] = None,
    config_path: Optional[str] = None,
    nearest_sheet: Optional[str] = None,
    nearest_rows: int = 8,
    nearest_k: int = 3,
    nearest_order: str = "index",
    ceiling: bool = False,
    figure: Optional[str] = None,
) -> dict:
    """Compares generated shapes with a category's reference shapes (MMD, COV, 1-NNA).

    Args:
        weights_or_samples: generator weights (`generator_weights.h5`, with the run's `config.json` beside it or
            given as `config_path`), or a `samples.npz` from `scripts/generate.py --format npz`. Weights produce as
            many samples as there are references, from latents `sample_latents(n, z_size, z_stddev, seed)`; a
            samples file is used as it is.
        category: the reference category, e.g. `"chair"`.
        data_dir: the 3DShapeNets data (folder, zip or packed `.npz` slice); `None` see `load_dataset`.
        split: the reference split; `"test"` holds shapes the GAN never saw.
        rotations: `"canonical"` (`_1` only, the pose the GAN is usually trained on) or `"all"`.
        distances: any of `"iou"` and `"chamfer"`.
        points: surface points per shape for the Chamfer distance.
        seed: latent seed (weights only) and surface sampling seed.
        threshold: occupancy threshold of the generated probabilities.
        batch_statistics: the generator's BatchNorm uses each batch's statistics (as in training) rather than the
            moving averages.
        max_references: use at most this many reference shapes, evenly spaced (Chamfer costs grow as the square).
        cache_dir: where parsed data is cached.
        config_path: the run's `config.json` when it is not beside the weights.
        nearest_sheet: also find every sample's nearest training shapes by IoU (the paper's figure 3), compare
            those IoUs with the test shapes' (`threedgan.nearest.memorisation_summary`) and draw the sheet to this
            PNG.
        nearest_rows: samples drawn on the sheet.
        nearest_k: training shapes drawn beside each.
        nearest_order: `"index"` draws the first samples (`sample:0`, `sample:1`, ...); `"closest"` those nearest
            to a training shape, the likeliest copies.
        ceiling: also score shapes of the other split (the training shapes, against test references) as if they
            were samples, with the same counts: the best the metrics can show for this data.
        figure: draw the metrics against that ceiling to this PNG (implies `ceiling`).

    Returns:
        A dict with the keys of `threedgan.metrics.evaluate_sets` (`mmd_iou`, `cov_iou`, `1nna_iou`, ... as
        fractions, `sample_count`, `reference_count`, occupancies, `mean_pairwise_iou_samples`) and `category`,
        `split`, `rotations`, `sample_source` (the path read), `distances`, `points`, `seed`, `seconds`,
        `warnings` (one line each: see `sample_warnings`) and `sample_provenance` (what a `samples.npz` records);
        with `ceiling`, the same metrics prefixed `ceiling_`; with `nearest_sheet`, `nearest_train_iou_samples`
        and `nearest_train_iou_test` (one IoU a shape), `nearest_train_names` (each sample's nearest training
        file), the summary of `memorisation_summary`, `train_count` and `nearest_sheet`; with `figure`, `figure`.

    Raises:
        ConfigError: an unknown distance, an unreadable samples file, or samples on another grid than the
            references.
        DataError, WeightsError: see `load_dataset` and `load_generator`.
    """
    from threedgan.metrics import evaluate_sets

    start = time.perf_counter()
    distances = tuple(distances)
    unknown = [name for name in distances if name not in DISTANCES]
    if unknown or not distances:
        raise ConfigError(f"unknown distance {unknown[0] if unknown else ''!r}; choose from {', '.join(DISTANCES)}")
    if not os.path.exists(weights_or_samples):
        raise ConfigError(f"file not found: {weights_or_samples}")
    if nearest_order not in ("index", "closest"):
        raise ConfigError(f"unknown nearest-neighbour order {nearest_order!r}; choose index or closest")
    references = reference_volumes(category, data_dir, split, rotations, max_references, cache_dir)
    provenance = None
    if weights_or_samples.lower().endswith(".npz"):
        from threedgan.generate import load_packed_samples, read_provenance

        samples = load_packed_samples(weights_or_samples)
        provenance = read_provenance(weights_or_samples)
        trained_on = provenance.get("categories")
    else:
        samples, config = generated_volumes(weights_or_samples, len(references), seed, batch_statistics, config_path)
        trained_on = list(config.categories)
    warnings = sample_warnings(category, trained_on, len(samples), len(references), provenance)
    try:
        results = evaluate_sets(samples, references, distances=distances, points=points, seed=seed, threshold=threshold)
    except ValueError as error:
        # Shapes that do not fit (a 32³ samples file, say) are the user's input, not a bug.
        raise ConfigError(f"{weights_or_samples}: {error}") from None
    results.update(
        category=category,
        split=split,
        rotations=rotations,
        sample_source=os.path.abspath(weights_or_samples),
        distances=list(distances),
        points=points,
        seed=seed,
        warnings=warnings,
        sample_provenance=provenance or {},
    )
    if nearest_sheet or ceiling or figure:
        from threedgan.data import load_dataset

        other_split = "train" if split == "test" else "test"
        other = load_dataset(data_dir, [category], split=other_split, rotations=rotations, cache_dir=cache_dir)
        if ceiling or figure:
            results.update(training_ceiling(other, len(samples), references, distances, points, seed))
        if nearest_sheet:
            if split == "test":
                train, test_references = other, references
            else:  # the references are the training set; the held-out comparison needs the test split
                train = load_dataset(data_dir, [category], split="train", rotations=rotations, cache_dir=cache_dir)
                test_references = upsample(other.volumes32(), "uint8")
            results.update(
                nearest_training_shapes(
                    samples, train, test_references, nearest_sheet, nearest_rows, nearest_k, nearest_order, threshold,
                    title=f"{category}: samples of {os.path.basename(weights_or_samples)} (orange) and their "
                    f"{nearest_k} nearest training shapes",
                )
            )
        if figure:
            results["figure"] = metrics_figure(results, figure)
    results["seconds"] = round(time.perf_counter() - start, 2)
    return results


def sample_warnings(category, trained_on, sample_count, reference_count, provenance=None) -> list:
    """One-line warnings about a comparison that cannot show what it seems to.

    Args:
        category: the reference category.
        trained_on: the categories the generator was trained on (from `samples.npz` or `config.json`), or `None`
            when unknown.
        sample_count: generated shapes.
        reference_count: reference shapes.
        provenance: what `samples.npz` records, `{}` for a file that records nothing, `None` for samples drawn from
            weights here.

    Returns:
        A list of strings, empty when all is well.
    """
    warnings = []
    if provenance == {}:
        warnings.append("the samples file records no provenance (written by an older version): category and count unchecked")
    trained_on = [str(name) for name in trained_on or []]
    if trained_on and "all" not in trained_on and category not in trained_on:
        warnings.append(
            f"the samples come from a generator trained on {', '.join(trained_on)}, but the references are "
            f"{category}; pass --category {trained_on[0]}"
        )
    if sample_count < reference_count:
        warnings.append(
            f"{sample_count} samples against {reference_count} references: COV cannot exceed "
            f"{100 * sample_count / reference_count:.0f} %; generate at least {reference_count} "
            f"(scripts/generate.py --num {reference_count} --format npz)"
        )
    return warnings


def training_ceiling(other_split, count, references, distances=DISTANCES, points=2048, seed=0) -> dict:
    """The metrics of real shapes of the other split, scored as if they were samples: what a perfect generator gets.

    Args:
        other_split: a `VoxelDataset` of the split the references are not from (the training shapes for test
            references).
        count: shapes to take from it, evenly spaced (the sample count, so that COV's cap is the same).
        references: uint8 (m, 64, 64, 64) reference volumes.
        distances: any of `"iou"` and `"chamfer"`.
        points: surface points per shape for Chamfer.
        seed: surface sampling seed.

    Returns:
        dict: `evaluate_sets`' metrics prefixed `ceiling_` (`ceiling_mmd_iou`, ...) and `ceiling_count`.
    """
    from threedgan.metrics import evaluate_sets

    count = min(int(count), len(other_split))
    chosen = np.linspace(0, len(other_split) - 1, count).round().astype(int)
    scores = evaluate_sets(
        upsample(other_split.volumes32(chosen), "uint8"), references, distances=distances, points=points, seed=seed
    )
    keys = [f"{metric}_{distance}" for distance in distances for metric in ("mmd", "cov", "1nna")]
    ceiling = {f"ceiling_{key}": scores[key] for key in keys}
    ceiling["ceiling_count"] = count
    return ceiling


def nearest_training_shapes(
    samples, train, test_references, sheet_path, rows=8, k=3, order="index", threshold=0.5, title=None
) -> dict:
    """Each sample's nearest training shapes by IoU, the test shapes' for comparison, and the sheet that shows them.

    Args:
        samples: (n, 64, 64, 64) generated volumes.
        train: the training split as a `VoxelDataset` (kept at 32³: IoUs are those of the 64³ zoom).
        test_references: uint8 (t, 64, 64, 64) held-out shapes.
        sheet_path: the PNG to draw (`threedgan.nearest.nearest_neighbour_sheet`).
        rows: samples drawn.
        k: training shapes beside each.
        order: `"index"` (the first samples) or `"closest"` (the samples nearest to a training shape).
        threshold: occupancy threshold of the samples.
        title: the sheet's title.

    Returns:
        dict: `nearest_train_iou_samples`, `nearest_train_iou_test` (lists), `nearest_train_names`, the keys of
        `memorisation_summary`, `train_count` and `nearest_sheet`.
    """
    from threedgan.nearest import iou_to_references, memorisation_summary, nearest_neighbour_sheet, nearest_neighbours

    train32 = train.volumes32()
    zoom = np.asarray(samples).shape[1] // train32.shape[1]
    indices, ious = nearest_neighbours(samples, train32, k=k, threshold=threshold, reference_zoom=zoom)
    test_nearest = iou_to_references(test_references, train32, reference_zoom=zoom).max(axis=1)
    names = [os.path.splitext(str(name))[0] for name in train.names]
    count = min(int(rows), len(samples))
    if order == "closest":
        shown = np.argsort(-ious[:, 0], kind="stable")[:count]
    else:
        shown = np.arange(count)
    nearest_neighbour_sheet(
        samples, train32, indices, ious, sheet_path, rows=shown,
        sample_labels=[f"sample:{i}" for i in range(len(samples))], reference_labels=names,
        test_nearest_iou=test_nearest, title=title, threshold=threshold,
    )  # fmt: skip
    results = {
        "nearest_train_iou_samples": [round(float(value), 4) for value in ious[:, 0]],
        "nearest_train_iou_test": [round(float(value), 4) for value in test_nearest],
        "nearest_train_names": [names[index] for index in indices[:, 0]],
        "train_count": len(train32),
        "nearest_sheet": os.path.abspath(sheet_path),
    }
    results.update(memorisation_summary(ious[:, 0], test_nearest))
    return results


# ---------------------------------------------------------------------------------------------- the table


_LABELS = {
    "mmd_iou": ("MMD (1 - IoU)", "lower is better"),
    "cov_iou": ("COV (1 - IoU)", "higher is better"),
    "1nna_iou": ("1-NNA (1 - IoU)", "50 % is ideal"),
    "mmd_chamfer": ("MMD (Chamfer)", "lower is better"),
    "cov_chamfer": ("COV (Chamfer)", "higher is better"),
    "1nna_chamfer": ("1-NNA (Chamfer)", "50 % is ideal"),
    "mean_pairwise_iou_samples": ("mean pairwise IoU, samples", "near 1: collapse"),
    "sample_occupancy": ("occupied voxels, samples", ""),
    "reference_occupancy": ("occupied voxels, references", ""),
    "accuracy": ("accuracy", "linear SVM on D's features"),
    "mean_class_accuracy": ("mean class accuracy", ""),
    "nearest_train_iou_samples_median": ("IoU with nearest train shape, samples", "median"),
    "nearest_train_iou_test_median": ("IoU with nearest train shape, test shapes", "median: what new shapes get"),
    "samples_above_test_p95": ("samples above test shapes' 95th percentile", "about 5 %: not copying"),
    "samples_copying": ("samples at IoU >= 0.99 with a train shape", "copies"),
    "test_copying": ("test shapes at IoU >= 0.99 with a train shape", "the data's own duplicates"),
}
# The same metrics for real shapes of the other split scored as samples (`training_ceiling`).
_LABELS.update(
    {
        f"ceiling_{key}": (f"{_LABELS[key][0]}, ceiling", "train shapes as samples")
        for key in ("mmd_iou", "cov_iou", "1nna_iou", "mmd_chamfer", "cov_chamfer", "1nna_chamfer")
    }
)
_PERCENT = ("cov_", "1nna_", "occupancy", "accuracy", "_above_", "copying")
# Printed apart (`warning: ...` lines) or one value a shape: in the JSON, not in the table.
_NOT_IN_TABLE = ("warnings", "nearest_train_iou_samples", "nearest_train_iou_test", "nearest_train_names")


def _format_value(key: str, value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(value)
        if any(part in key for part in _PERCENT):
            return f"{100 * value:.2f} %"
        return f"{value:.5g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) if len(value) <= 12 else f"{len(value)} items"
    return str(value)


def format_table(results: dict) -> str:
    """Renders a results dict as an aligned two- or three-column text table.

    Metrics come first with readable names and a hint of which way is better; fractions are shown as percentages;
    the remaining fields (counts, sources, settings) follow under their own keys. Nested dicts (per-class
    accuracies) are left out: they are in the JSON.
    """
    rows = [(label, _format_value(key, results[key]), hint) for key, (label, hint) in _LABELS.items() if key in results]
    rows += [
        (key, _format_value(key, value), "")
        for key, value in results.items()
        if key not in _LABELS and key not in _NOT_IN_TABLE and not isinstance(value, dict)
    ]
    if not rows:
        return "(no results)"
    name_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    lines = [f"{name:<{name_width}}  {value:>{value_width}}  {hint}".rstrip() for name, value, hint in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule] + lines + [rule])


_FIGURE_METRICS = (("mmd", "MMD", "lower is better"), ("cov", "COV", "higher is better"), ("1nna", "1-NNA", "50 % is ideal"))


def metrics_figure(results: dict, path: str) -> str:
    """Draws the samples' MMD, COV and 1-NNA beside the data's ceiling (`training_ceiling`) as bar charts.

    One row of three panels a distance in `results` (1 - IoU, Chamfer); each panel has a bar for the samples and one
    for training shapes scored the same way, with the numbers written on the bars and 1-NNA's ideal 50 % marked.

    Args:
        results: from `evaluate_generator(..., ceiling=True)`.
        path: the PNG to write (its folder is created).

    Returns:
        `path`.

    Raises:
        ConfigError: `results` holds no metric with its ceiling.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    distances = [d for d in DISTANCES if f"mmd_{d}" in results and f"ceiling_mmd_{d}" in results]
    if not distances:
        raise ConfigError("no metrics with a ceiling to draw: evaluate with ceiling=True (--ceiling)")
    figure = Figure(figsize=(9, 2.6 * len(distances) + 0.5), layout="constrained")
    FigureCanvasAgg(figure)  # a Figure of its own, no pyplot: nothing global, nothing shown
    axes = figure.subplots(len(distances), len(_FIGURE_METRICS), squeeze=False)
    colours = ("#d6843b", "#6b9fd6")
    for row, distance in enumerate(distances):
        name = "1 - IoU" if distance == "iou" else "Chamfer"
        for column, (metric, label, hint) in enumerate(_FIGURE_METRICS):
            axis = axes[row][column]
            values = [results[f"{metric}_{distance}"], results[f"ceiling_{metric}_{distance}"]]
            percent = metric != "mmd"
            shown = [100 * value if percent else value for value in values]
            bars = axis.bar(["samples", "train shapes\n(ceiling)"], shown, color=colours, width=0.6)
            for bar, value in zip(bars, shown):
                axis.annotate(
                    f"{value:.1f} %" if percent else f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points",
                )  # fmt: skip
            if metric == "1nna":
                axis.axhline(50, color="gray", linestyle="--", linewidth=1)
            if percent:
                axis.set_ylim(0, 110)
            else:
                axis.set_ylim(0, max(shown) * 1.2 or 1)
            axis.set_title(f"{label} ({name}): {hint}", fontsize=9)
            axis.tick_params(labelsize=8)
    figure.suptitle(
        f"{results.get('category', '')}: {results.get('sample_count')} samples against "
        f"{results.get('reference_count')} {results.get('split', '')} shapes; ceiling: "
        f"{results.get('ceiling_count')} shapes of the other split",
        fontsize=10,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# ------------------------------------------------------------------------------------ discriminator as descriptor


def discriminator_features(discriminator, volumes_dataset, batch_size: int = 32) -> np.ndarray:
    """The paper's shape descriptor for every volume: D's conv 2-4 responses, max-pooled and concatenated.

    Args:
        discriminator: a model from `build_discriminator` (trained or not).
        volumes_dataset: a `VoxelDataset` (expanded to 64³ one batch at a time, so only one batch of float volumes
            is held) or an array (n, 64, 64, 64) / (n, 64, 64, 64, 1).
        batch_size: volumes per forward pass.

    Returns:
        float32 array (n, 7168). BatchNorm uses its moving statistics (`training=False`): a volume's features do
        not depend on which other volumes share its batch.
    """
    from threedgan.models import build_feature_extractor

    extractor = build_feature_extractor(discriminator)
    if hasattr(volumes_dataset, "volumes64"):
        count = len(volumes_dataset)

        def batch(indices):
            return volumes_dataset.volumes64(indices)

    else:
        volumes = np.asarray(volumes_dataset)
        count = len(volumes)

        def batch(indices):
            chunk = volumes[indices].astype(np.float32)
            return chunk[..., None] if chunk.ndim == 4 else chunk

    # predict_on_batch runs a compiled forward pass (training=False) on every backend; the short last batch
    # traces once more.
    outputs = []
    for start in range(0, count, batch_size):
        indices = np.arange(start, min(start + batch_size, count))
        outputs.append(np.asarray(extractor.predict_on_batch(batch(indices)), dtype=np.float32))
    width = extractor.output_shape[-1]
    return np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)


def resolve_categories(categories, available: Sequence[str]):
    """Turns `"modelnet10"`, `"modelnet40"` or a list of names into the category list to classify.

    `"modelnet40"` means every ModelNet40 category present in the data (the 3DShapeNets archive holds 35 of
    the 40: car, guitar, lamp, piano and vase are missing).

    Returns:
        `(categories, missing)`: the names to use, and the benchmark's names the data lacks.

    Raises:
        DataError: a ModelNet10 category, or a named one, is missing from the data.
    """
    if isinstance(categories, str):
        name = categories.lower().replace("-", "")
        if name == "modelnet10":
            wanted = list(MODELNET10)
        elif name == "modelnet40":
            present = [c for c in MODELNET40 if c in available]
            return present, [c for c in MODELNET40 if c not in available]
        else:
            wanted = [categories]
    else:
        wanted = list(categories)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"category {missing[0]!r} is not in the data; available: {', '.join(available)}")
    return wanted, []


def linear_classifier_accuracy(
    train_features, train_labels, test_features, test_labels, C: float = DEFAULT_SVM_C, solver: str = "gram"
):
    """Fits a linear SVM on standardised features and scores it on the test features.

    Features are standardised with the train split's mean and deviation: D's layers differ in scale by orders of
    magnitude, and an unscaled SVM would see only the largest.

    Args:
        train_features, train_labels, test_features, test_labels: (n, features) arrays and (n,) integer labels.
        C: the SVM's regularisation.
        solver: `"gram"` solves the linear SVM in its dual on the Gram matrix of the features (libsvm, one-vs-one),
            which is fast when there are fewer shapes than features (ModelNet10: 4k shapes, 7168 features: seconds);
            `"liblinear"` uses `LinearSVC` (squared hinge, one-vs-rest), minutes on the same data.

    Returns:
        dict with `accuracy` (fraction of test shapes right), `mean_class_accuracy` (mean of per-class recalls,
        which ModelNet's unbalanced classes make differ), `per_class_accuracy` (label -> fraction), `solver` and
        `fit_seconds`.

    Raises:
        ConfigError: an unknown `solver`.
    """
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    scaler = StandardScaler().fit(train_features)
    train_scaled = scaler.transform(train_features).astype(np.float32)
    test_scaled = scaler.transform(test_features).astype(np.float32)
    if solver == "gram":
        from sklearn.svm import SVC

        classifier = SVC(kernel="precomputed", C=C).fit(train_scaled @ train_scaled.T, train_labels)
        predicted = classifier.predict(test_scaled @ train_scaled.T)
    elif solver == "liblinear":
        from sklearn.svm import LinearSVC

        classifier = LinearSVC(C=C, dual="auto", max_iter=5000).fit(train_scaled, train_labels)
        predicted = classifier.predict(test_scaled)
    else:
        raise ConfigError(f"unknown SVM solver {solver!r}; choose gram or liblinear")
    test_labels = np.asarray(test_labels)
    per_class = {int(label): float(np.mean(predicted[test_labels == label] == label)) for label in np.unique(test_labels)}
    return {
        "accuracy": float(np.mean(predicted == test_labels)),
        "mean_class_accuracy": float(np.mean(list(per_class.values()))),
        "per_class_accuracy": per_class,
        "solver": solver,
        "fit_seconds": round(time.perf_counter() - start, 2),
    }


def load_discriminator(weights: Optional[str], config_path: Optional[str] = None, seed: int = 0):
    """Builds the chapter's discriminator and loads `weights`, or leaves it randomly initialised with `seed`.

    The architecture is fixed; the config (from `config_path`, else the `config.json` beside the weights, else the
    defaults) only supplies `cube_length`.

    Raises:
        WeightsError: missing weights or weights of another architecture. ConfigError: unreadable config.
    """
    import keras

    from threedgan.config import CONFIG_FILENAME, Config
    from threedgan.models import build_discriminator
    from threedgan.weights import load_weights_h5

    if weights is not None:
        from threedgan.run_set import check_weights_file

        if not os.path.exists(weights):
            from threedgan.errors import WeightsError

            raise WeightsError(f"weights file not found: {weights}")
        # A final save killed between two files leaves weights and config of two runs: refuse the mix.
        check_weights_file(weights)
    if config_path is None and weights is not None:
        beside = os.path.join(os.path.dirname(os.path.abspath(weights)), CONFIG_FILENAME)
        config_path = beside if os.path.exists(beside) else None
    config = Config.load(config_path) if config_path else Config()
    keras.utils.set_random_seed(seed)
    discriminator = build_discriminator(config)
    if weights is not None:
        load_weights_h5(discriminator, weights)
    return discriminator


def classification_accuracy(
    discriminator_weights: Optional[str],
    config_path: Optional[str],
    data_dir: Optional[str],
    categories="modelnet10",
    rotations: str = "canonical",
    C: float = DEFAULT_SVM_C,
    max_per_split: Optional[int] = None,
    cache_dir: Optional[str] = None,
    batch_size: int = 32,
    seed: int = 0,
    solver: str = "gram",
) -> dict:
    """The paper's classification test of the discriminator's features (section 4.2).

    Args:
        discriminator_weights: `discriminator_weights.h5` of a trained GAN, or `None` for a randomly initialised
            discriminator (seeded by `seed`): the baseline that shows what training adds.
        config_path: the run's `config.json`, or `None` (beside the weights, else defaults; see
            `load_discriminator`).
        data_dir: the 3DShapeNets data (folder, zip or packed `.npz` slice).
        categories: `"modelnet10"`, `"modelnet40"` (the categories of ModelNet40 present in the data) or names.
        rotations: `"canonical"` (`_1` only) or `"all"` (12 rotations of each model, 12× the features).
        C: the SVM's regularisation.
        max_per_split: use at most this many volumes of each split, evenly spaced over the categories.
        cache_dir: where parsed data is cached.
        batch_size: volumes per forward pass of the feature extractor.
        seed: seed of the random initialisation when there are no weights.
        solver: see `linear_classifier_accuracy`.

    Returns:
        dict with `accuracy`, `mean_class_accuracy`, `per_class_accuracy` (name -> fraction), `train_count`,
        `test_count`, `category_count`, `categories`, `missing_categories` (ModelNet40 names the data lacks),
        `feature_size`, `discriminator` (the weights path or `"random (seed N)"`), `C`, `rotations`,
        `feature_seconds` and `fit_seconds`.

    Raises:
        DataError, WeightsError, ConfigError: bad data, weights or config.
    """
    from threedgan.data import list_categories, load_dataset

    if data_dir is not None and str(data_dir).endswith(".npz") and os.path.isfile(data_dir):
        from threedgan.safe_io import list_npz

        available = sorted({key[: -len("_train")] for key in list_npz(data_dir, DataError, "packed slice") if key.endswith("_train")})
    else:
        available = list_categories(data_dir)
    names, missing = resolve_categories(categories, available)
    discriminator = load_discriminator(discriminator_weights, config_path, seed)
    splits, features = {}, {}
    start = time.perf_counter()
    for split in ("train", "test"):
        splits[split] = load_dataset(
            data_dir, names, split=split, rotations=rotations, max_samples=max_per_split, cache_dir=cache_dir
        )
        features[split] = discriminator_features(discriminator, splits[split], batch_size)
    feature_seconds = time.perf_counter() - start
    if len(np.unique(splits["train"].labels)) < 2:
        raise DataError("the train split holds fewer than 2 categories; a classifier needs at least 2")
    scores = linear_classifier_accuracy(
        features["train"], splits["train"].labels, features["test"], splits["test"].labels, C=C, solver=solver
    )
    scores["per_class_accuracy"] = {names[label]: value for label, value in scores["per_class_accuracy"].items()}
    scores.update(
        train_count=len(splits["train"]),
        test_count=len(splits["test"]),
        category_count=len(names),
        categories=names,
        missing_categories=missing,
        feature_size=int(features["train"].shape[1]),
        discriminator=os.path.abspath(discriminator_weights) if discriminator_weights else f"random (seed {seed})",
        C=C,
        rotations=rotations,
        feature_seconds=round(feature_seconds, 2),
    )
    return scores


# ----------------------------------------------------------------------------------------------- command line


def evaluate_parser() -> argparse.ArgumentParser:
    from threedgan.cli import MAX_SEED, ArgumentParser, _positive_float, _positive_int, bounded_int, probability

    parser = ArgumentParser(
        prog="threedgan-evaluate",
        description="Measure a generator against a category's test shapes (MMD, COV, 1-NNA), or, with --classify, "
        "the discriminator's features with a linear SVM on ModelNet10/40 (the paper's section 4.2).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="generator_weights.h5 (config.json beside it); samples as many as references")
    source.add_argument("--samples", help="samples.npz from scripts/generate.py --format npz")
    parser.add_argument("--config", dest="config_file", help="the run's config.json, if it is not beside the weights")
    parser.add_argument("--category", default="chair", help="reference category (default chair)")
    parser.add_argument("--data-dir", help="volumetric_data folder, a folder above it, the zip, or a packed .npz slice")
    parser.add_argument("--split", choices=["train", "test"], default="test", help="reference split (default test)")
    parser.add_argument("--rotations", choices=["canonical", "all"], default="canonical", help="default canonical (_1)")
    parser.add_argument("--distances", default="iou,chamfer", help="comma-separated: iou, chamfer (default both)")
    parser.add_argument(
        "--points", type=bounded_int(1, 100_000), default=2048, help="surface points per shape for Chamfer (at most 100000)"
    )
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="latent and surface-sampling seed (default 0)")
    parser.add_argument("--threshold", type=probability, default=0.5, help="occupancy threshold, in (0, 1) (default 0.5)")
    parser.add_argument(
        "--batchnorm", choices=["batch", "moving"], default="batch", help="generator BatchNorm statistics (default batch)"
    )
    parser.add_argument("--max-references", type=_positive_int, help="use at most N reference shapes, evenly spaced")
    parser.add_argument("--cache-dir", help="where parsed data is cached (default ~/.cache/threedgan)")
    parser.add_argument("--json", dest="json_path", metavar="OUT.json", help="also write the results as JSON")
    nearest = parser.add_argument_group("memorisation and figures")
    nearest.add_argument(
        "--nearest-sheet",
        metavar="OUT.png",
        help="each sample beside its nearest training shapes by IoU (the paper's figure 3), with the distribution of "
        "samples' and test shapes' IoU with their nearest training shape; the numbers go in the table and JSON",
    )
    nearest.add_argument("--nearest-rows", type=bounded_int(1, 1024), default=8, help="samples on the sheet (default 8)")
    nearest.add_argument("--nearest-k", type=bounded_int(1, 64), default=3, help="training shapes beside each (default 3)")
    nearest.add_argument(
        "--nearest-order",
        choices=["index", "closest"],
        default="index",
        help="index: the first samples; closest: the samples nearest to a training shape (default index)",
    )
    nearest.add_argument(
        "--ceiling", action="store_true", help="also score training shapes as samples: the best this data can show"
    )
    nearest.add_argument("--figure", metavar="OUT.png", help="draw the metrics against that ceiling (implies --ceiling)")
    parser.add_argument("--logdir", help="also write the numbers as TensorBoard scalars under eval/")
    classify = parser.add_argument_group("classification (--classify)")
    classify.add_argument("--classify", choices=["modelnet10", "modelnet40"], help="SVM on the discriminator's features")
    classify.add_argument("--discriminator-weights", help="discriminator_weights.h5; 'random' for an untrained D")
    classify.add_argument("--max-per-split", type=_positive_int, help="use at most N volumes of each split")
    classify.add_argument("--svm-c", type=_positive_float, default=DEFAULT_SVM_C, help=f"SVM regularisation (default {DEFAULT_SVM_C})")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _json_ready(value):
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not defined" (e.g. pairwise IoU of one sample)
    return value


def _write_outputs(results: dict, json_path: Optional[str], logdir: Optional[str]) -> None:
    if json_path:
        folder = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(folder, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(_json_ready(results), handle, indent=2, sort_keys=True)
    if logdir:
        from threedgan.tensorboard_writer import SummaryWriter

        scalars = {
            key: float(value)
            for key, value in results.items()
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(float(value))
        }
        with SummaryWriter(logdir) as writer:
            writer.scalars(scalars, step=0, prefix="eval")


def _user_errors(main):
    from threedgan.cli import user_errors_to_exit_code

    return user_errors_to_exit_code(main)


@_user_errors
def evaluate_main(argv=None) -> int:
    """`threedgan-evaluate` / `scripts/evaluate.py`."""
    from threedgan.cli import check_output_folder

    arguments = evaluate_parser().parse_args(argv)
    # Every place results go is checked before minutes of measuring: a file in the way fails now.
    for flag, path in (("--json", arguments.json_path), ("--nearest-sheet", arguments.nearest_sheet), ("--figure", arguments.figure)):
        if path:
            if os.path.isdir(path):
                raise ConfigError(f"{flag} {path} is a folder; pass a file name")
            check_output_folder(os.path.dirname(os.path.abspath(path)), f"the folder of {flag}")
    if arguments.logdir:
        check_output_folder(arguments.logdir, "--logdir")
    if arguments.classify:
        if not arguments.discriminator_weights:
            raise ConfigError("--classify needs --discriminator-weights PATH (or 'random' for an untrained D)")
        weights = None if arguments.discriminator_weights == "random" else arguments.discriminator_weights
        results = classification_accuracy(
            weights,
            arguments.config_file,
            arguments.data_dir,
            arguments.classify,
            rotations=arguments.rotations,
            C=arguments.svm_c,
            max_per_split=arguments.max_per_split,
            cache_dir=arguments.cache_dir,
            seed=arguments.seed,
        )
        if results["missing_categories"]:
            print(
                f"note: {results['category_count']} of ModelNet40's 40 categories are in the data; missing: "
                f"{', '.join(results['missing_categories'])}"
            )
    else:
        source = arguments.weights or arguments.samples
        if not source:
            raise ConfigError("pass --weights generator_weights.h5 or --samples samples.npz (or --classify ...)")
        if arguments.samples and not arguments.samples.lower().endswith(".npz"):
            raise ConfigError(f"--samples expects a .npz from scripts/generate.py --format npz, got {arguments.samples}")
        distances = [part.strip().lower() for part in arguments.distances.split(",") if part.strip()]
        results = evaluate_generator(
            source,
            arguments.category,
            arguments.data_dir,
            split=arguments.split,
            rotations=arguments.rotations,
            distances=distances,
            points=arguments.points,
            seed=arguments.seed,
            threshold=arguments.threshold,
            batch_statistics=arguments.batchnorm == "batch",
            max_references=arguments.max_references,
            cache_dir=arguments.cache_dir,
            config_path=arguments.config_file,
            nearest_sheet=arguments.nearest_sheet,
            nearest_rows=arguments.nearest_rows,
            nearest_k=arguments.nearest_k,
            nearest_order=arguments.nearest_order,
            ceiling=arguments.ceiling,
            figure=arguments.figure,
        )
        for warning in results["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    print(format_table(results))
    _write_outputs(results, arguments.json_path, arguments.logdir)
    for key in ("nearest_sheet", "figure"):
        if results.get(key):
            print(f"wrote {results[key]}")
    if arguments.json_path:
        print(f"wrote {arguments.json_path}")
    return 0
