"""Tests of the set-level shape metrics (MMD, COV, 1-NNA under 1 - IoU and Chamfer)."""
import io
import zipfile

import numpy as np
import pytest
import scipy.io
import scipy.ndimage

from threedgan import metrics


def box(low, high, side=16):
    volume = np.zeros((side,) * 3, dtype=np.uint8)
    volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = 1
    return volume


def ball(center, radius, side=16):
    grid = np.indices((side,) * 3).transpose(1, 2, 3, 0)
    return (np.linalg.norm(grid - np.asarray(center), axis=-1) <= radius).astype(np.uint8)


def distinct_boxes(count, side=16, seed=0):
    """`count` boxes of different corners and sizes."""
    rng = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < count:
        low = rng.integers(0, side // 2, 3)
        high = low + rng.integers(2, side // 2, 3)
        candidate = box(low, high, side)
        if not any(np.array_equal(candidate, shape) for shape in shapes):
            shapes.append(candidate)
    return np.stack(shapes)


def slow_iou_distances(a, b, threshold=0.5):
    distances = np.empty((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            x_on, y_on = x > threshold, y > threshold
            union = np.logical_or(x_on, y_on).sum()
            distances[i, j] = 0.0 if union == 0 else 1.0 - np.logical_and(x_on, y_on).sum() / union
    return distances


def slow_chamfer(a, b):
    squared = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(axis=-1)
    return squared.min(axis=1).mean() + squared.min(axis=0).mean()


def test_iou_distance_matrix_matches_a_slow_loop():
    rng = np.random.default_rng(0)
    a = rng.random((5, 12, 12, 12)).astype(np.float32) ** 3  # sparse-ish probabilities
    b = rng.random((4, 12, 12, 12, 1)).astype(np.float32) ** 3
    a[2] = 0.0  # an empty shape
    b[1] = 0.0
    expected = slow_iou_distances(a, b[..., 0])
    np.testing.assert_allclose(metrics.iou_distance_matrix(a, b), expected, atol=1e-12)
    # Two empty shapes are the same shape.
    assert metrics.iou_distance_matrix(a, b)[2, 1] == 0.0
    assert metrics.iou_distance_matrix(a, b)[0, 1] == 1.0


def test_iou_distance_matrix_accepts_bool_and_uint8_volumes():
    shapes = distinct_boxes(3)
    from_uint8 = metrics.iou_distance_matrix(shapes, shapes)
    np.testing.assert_array_equal(metrics.iou_distance_matrix(shapes.astype(bool), shapes.astype(bool)), from_uint8)
    np.testing.assert_allclose(from_uint8, slow_iou_distances(shapes, shapes), atol=1e-12)


def test_iou_distance_matrix_of_a_set_with_itself_is_symmetric_with_zero_diagonal():
    shapes = distinct_boxes(6)
    distances = metrics.iou_distance_matrix(shapes)
    np.testing.assert_array_equal(np.diag(distances), 0.0)
    np.testing.assert_array_equal(distances, distances.T)
    assert (distances[~np.eye(6, dtype=bool)] > 0).all()
    np.testing.assert_allclose(distances, metrics.iou_distance_matrix(shapes, shapes), atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_chunking_does_not_change_the_iou_matrix(chunk_size):
    rng = np.random.default_rng(1)
    a = (rng.random((7, 10, 10, 10)) > 0.6).astype(np.uint8)
    b = (rng.random((5, 10, 10, 10)) > 0.4).astype(np.uint8)
    whole = metrics.iou_distance_matrix(a, b, chunk_size=100)
    np.testing.assert_array_equal(metrics.iou_distance_matrix(a, b, chunk_size=chunk_size), whole)
    self_distances = metrics.iou_distance_matrix(a, chunk_size=chunk_size)
    np.testing.assert_array_equal(self_distances, metrics.iou_distance_matrix(a, chunk_size=100))
    np.testing.assert_allclose(self_distances, slow_iou_distances(a, a), atol=1e-12)
    np.testing.assert_allclose(whole, slow_iou_distances(a, b), atol=1e-12)


def test_iou_distance_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError):
        metrics.iou_distance_matrix(np.zeros((8, 8, 8)), np.zeros((2, 8, 8, 8)))
    with pytest.raises(ValueError):
        metrics.iou_distance_matrix(np.zeros((2, 8, 8, 8)), np.zeros((2, 9, 9, 9)))


def test_occupancy_is_the_mean_occupied_fraction():
    volumes = np.zeros((2, 4, 4, 4), dtype=np.float32)
    volumes[0, :2] = 0.9  # half of the first grid
    volumes[1, 0, 0, 0] = 0.5  # not above the threshold
    assert metrics.occupancy(volumes) == pytest.approx(0.25)
    assert metrics.occupancy(volumes[..., None]) == pytest.approx(0.25)


def test_sample_surface_points_is_deterministic_and_lies_on_the_surface():
    volume = box((4, 4, 4), (12, 12, 12), side=16)  # spans [0.25, 0.75]^3 of the unit cube
    points = metrics.sample_surface_points(volume, count=500, seed=3)
    assert points.shape == (500, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points, metrics.sample_surface_points(volume, count=500, seed=3))
    assert not np.array_equal(points, metrics.sample_surface_points(volume, count=500, seed=4))
    assert points.min() >= 0.25 - 1e-6 and points.max() <= 0.75 + 1e-6
    # Distance to the nearest face of the box: 0 on faces, under a voxel where
    # marching cubes bevels the edges.
    to_faces = np.minimum(np.abs(points - 0.25), np.abs(points - 0.75)).min(axis=1)
    assert to_faces.max() <= 1.0 / 16 + 1e-6
    assert np.mean(to_faces < 1e-6) > 0.8


def test_sample_surface_points_of_a_full_grid_and_a_ball():
    full = metrics.sample_surface_points(np.ones((8, 8, 8, 1), dtype=np.float32), count=300)
    assert full.min() >= 0.0 and full.max() <= 1.0
    to_border = np.minimum(full, 1.0 - full).min(axis=1)  # bevelled edges sit within a voxel
    assert to_border.max() <= 1.0 / 8 + 1e-6 and np.mean(to_border < 1e-6) > 0.7
    radius = 9.0
    points = metrics.sample_surface_points(ball((15.5, 15.5, 15.5), radius, side=32), count=1000)
    distances = np.linalg.norm(points - 0.5, axis=1) * 32
    assert np.abs(distances - radius).max() < 1.0


def test_sample_surface_points_of_an_empty_grid_are_at_the_centre():
    points = metrics.sample_surface_points(np.zeros((8, 8, 8)), count=10)
    np.testing.assert_array_equal(points, np.full((10, 3), 0.5, dtype=np.float32))


def test_surface_point_sets_gives_each_shape_its_points():
    shapes = distinct_boxes(3)
    sets = metrics.surface_point_sets(shapes[..., None], count=64, seed=5)
    assert sets.shape == (3, 64, 3) and sets.dtype == np.float32
    for shape, points in zip(shapes, sets):
        np.testing.assert_array_equal(points, metrics.sample_surface_points(shape, count=64, seed=5))


def test_chamfer_distance_matrix_matches_a_slow_loop():
    rng = np.random.default_rng(2)
    a = rng.random((4, 50, 3)).astype(np.float32)
    b = rng.random((3, 70, 3)).astype(np.float32) * 2.0 - 0.5  # other count and range
    expected = np.array([[slow_chamfer(x, y) for y in b] for x in a])
    np.testing.assert_allclose(metrics.chamfer_distance_matrix(a, b), expected, rtol=1e-9, atol=1e-12)
    expected_self = np.array([[slow_chamfer(x, y) for y in a] for x in a])
    np.testing.assert_allclose(metrics.chamfer_distance_matrix(a), expected_self, rtol=1e-9, atol=1e-12)


def test_chamfer_is_zero_for_a_shape_with_itself_and_grows_with_a_shift():
    points = metrics.sample_surface_points(box((3, 4, 5), (10, 12, 9)), count=256)
    shifts = [0.0, 0.01, 0.03, 0.1, 0.3]
    shifted = np.stack([points + np.array([shift, 0.0, 0.0], dtype=np.float32) for shift in shifts])
    distances = metrics.chamfer_distance_matrix(points[None], shifted)[0]
    assert distances[0] == 0.0
    assert np.all(np.diff(distances) > 0)
    # A translation by t moves every nearest neighbour by at most |t|.
    assert np.all(distances <= 2 * np.square(shifts) + 1e-9)


def test_mmd_cov_on_a_hand_made_matrix():
    distances = np.array([[0.1, 0.5, 0.7], [0.2, 0.3, 0.9], [0.9, 0.05, 0.8]])
    scores = metrics.mmd_cov(distances)
    assert scores["mmd"] == pytest.approx((0.1 + 0.05 + 0.7) / 3)
    assert scores["cov"] == pytest.approx(2 / 3)  # references 0 and 1 are hit, 2 is not
    collapsed = metrics.mmd_cov(np.array([[0.1, 0.4], [0.1, 0.4], [0.1, 0.4]]))
    assert collapsed["cov"] == pytest.approx(0.5)


def test_one_nna_separable_and_copied_sets():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(10, 2))
    references = rng.normal(size=(12, 2)) + 100.0

    def pairwise(x, y):
        return np.linalg.norm(x[:, None] - y[None], axis=-1)

    separable = metrics.one_nna(pairwise(samples, samples), pairwise(references, references), pairwise(samples, references))
    assert separable == 1.0
    # Copies of the references: every shape's nearest other shape is its twin
    # in the other set, so every shape is misclassified.
    copies = metrics.one_nna(pairwise(references, references), pairwise(references, references), pairwise(references, references))
    assert copies == 0.0


def test_one_nna_is_near_one_half_for_one_distribution():
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(300, 2))
    references = rng.normal(size=(300, 2))

    def pairwise(x, y):
        return np.linalg.norm(x[:, None] - y[None], axis=-1)

    accuracy = metrics.one_nna(pairwise(samples, samples), pairwise(references, references), pairwise(samples, references))
    assert 0.4 < accuracy < 0.6


def test_one_nna_tie_convention_gives_ties_to_references():
    # All shapes identical: every neighbour is at distance 0; references win the
    # tie, so references are right and samples wrong.
    assert metrics.one_nna(np.zeros((3, 3)), np.zeros((5, 5)), np.zeros((3, 5))) == pytest.approx(5 / 8)
    assert metrics.one_nna(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))) == 0.5
    with pytest.raises(ValueError):
        metrics.one_nna(np.zeros((3, 3)), np.zeros((5, 5)), np.zeros((5, 3)))


def test_evaluate_sets_on_identical_sets():
    shapes = distinct_boxes(6)
    results = metrics.evaluate_sets(shapes, shapes.astype(np.float32)[..., None], points=128)
    for distance in ("iou", "chamfer"):
        assert results[f"mmd_{distance}"] == 0.0
        assert results[f"cov_{distance}"] == 1.0
        # Identical sets are the memorisation extreme of 1-NNA (see one_nna).
        assert results[f"1nna_{distance}"] == 0.0
    assert results["sample_count"] == results["reference_count"] == 6
    assert results["sample_occupancy"] == results["reference_occupancy"] == pytest.approx(shapes.mean())
    assert results["mean_pairwise_iou_samples"] < 0.9


def test_evaluate_sets_on_separated_sets_and_a_collapsed_generator():
    references = distinct_boxes(5, seed=1)
    balls = np.stack([ball((11, 11, 11), radius, side=16) for radius in (2.0, 2.5, 3.0, 3.5)])
    separated = metrics.evaluate_sets(balls, references, points=128)
    assert separated["1nna_chamfer"] == 1.0
    assert separated["mmd_iou"] > 0.5

    collapsed = np.repeat(balls[:1], 4, axis=0)
    results = metrics.evaluate_sets(collapsed, references, distances=("iou",))
    assert results["mean_pairwise_iou_samples"] == 1.0
    assert results["cov_iou"] == pytest.approx(1 / 5)
    assert "mmd_chamfer" not in results
    # Independent leave-one-out loop: the 4 copies find each other, each
    # reference is right when another reference is at least as close as the
    # ball (references win ties).
    to_ball = slow_iou_distances(references, balls[:1])[:, 0]
    among_references = slow_iou_distances(references, references) + np.diag(np.full(5, np.inf))
    references_right = np.sum(among_references.min(axis=1) <= to_ball)
    assert results["1nna_iou"] == pytest.approx((4 + references_right) / 9)
    assert results["mmd_iou"] == pytest.approx(to_ball.mean())


def test_evaluate_sets_rejects_unknown_distances_and_mismatched_grids():
    shapes = distinct_boxes(2)
    with pytest.raises(ValueError):
        metrics.evaluate_sets(shapes, shapes, distances=("emd",))
    with pytest.raises(ValueError):
        metrics.evaluate_sets(shapes, np.zeros((2, 8, 8, 8)))


def load_canonical(archive, category, split, count):
    """The first `count` canonical (`_1`) shapes by name, padded to 32^3 and zoomed to 64^3 as in the book."""
    prefix = f"3DShapeNets/volumetric_data/{category}/30/{split}/"
    with zipfile.ZipFile(archive) as handle:
        names = sorted(name for name in handle.namelist() if name.startswith(prefix) and name.endswith("_1.mat"))
        volumes = [scipy.io.loadmat(io.BytesIO(handle.read(name)))["instance"] for name in names[:count]]
    return np.stack([scipy.ndimage.zoom(np.pad(volume, 1), 2, order=0, mode="constant") for volume in volumes])


def test_iou_metrics_on_real_chairs(shared_zip):
    """Train vs test chairs (a "ceiling": real vs real) and one train chair repeated (a "floor")."""
    train = load_canonical(shared_zip, "chair", "train", 100)
    test = load_canonical(shared_zip, "chair", "test", 100)
    assert train.shape == test.shape == (100, 64, 64, 64)
    ceiling = metrics.evaluate_sets(train, test, distances=("iou",))
    assert ceiling["mmd_iou"] == pytest.approx(0.576, abs=0.01)
    assert ceiling["cov_iou"] == pytest.approx(0.50, abs=0.02)
    assert ceiling["1nna_iou"] == pytest.approx(0.52, abs=0.02)
    floor = metrics.evaluate_sets(np.repeat(train[:1], 100, axis=0), test, distances=("iou",))
    assert floor["mmd_iou"] == pytest.approx(0.88, abs=0.01)
    assert floor["cov_iou"] == pytest.approx(0.01)
    assert floor["1nna_iou"] == pytest.approx(0.995)
    assert floor["mean_pairwise_iou_samples"] == 1.0


def test_evaluate_sets_with_repeated_shapes_equals_the_plain_computation():
    shapes = distinct_boxes(4, seed=2)
    samples = shapes[[0, 1, 1, 3, 0]]
    references = shapes[[2, 3, 3, 1]]
    results = metrics.evaluate_sets(samples, references, points=64, seed=1)
    joint = np.concatenate([samples, references])
    chamfer = metrics.chamfer_distance_matrix(metrics.surface_point_sets(joint, count=64, seed=1))
    iou = metrics.iou_distance_matrix(joint)
    for name, joint_distances in (("chamfer", chamfer), ("iou", iou)):
        d_ss, d_rr, d_sr = joint_distances[:5, :5], joint_distances[5:, 5:], joint_distances[:5, 5:]
        scores = metrics.mmd_cov(d_sr)
        assert results[f"mmd_{name}"] == pytest.approx(scores["mmd"], rel=1e-12)
        assert results[f"cov_{name}"] == scores["cov"]
        assert results[f"1nna_{name}"] == metrics.one_nna(d_ss, d_rr, d_sr)
