"""Set-level measurements of generated voxel shapes.

Follows the evaluation protocol of Achlioptas et al. (2018, "Learning
Representations and Generative Models for 3D Point Clouds") and PointFlow
(Yang et al. 2019): a generated sample set S is compared with a reference set R
under a shape distance D through

- MMD (minimum matching distance): mean over reference shapes r of
  min over samples s of D(r, s) -- fidelity, lower is better;
- COV (coverage): fraction of reference shapes that are the nearest reference
  of at least one sample -- diversity, higher is better;
- 1-NNA: leave-one-out accuracy of a 1-nearest-neighbour classifier telling
  samples from references on S u R. 0.5 is ideal, 1.0 means the sets are
  separable, and values well below 0.5 mean the samples copy the references
  (each sample's nearest neighbour is its own twin in the other set).

Two distances are provided: 1 - IoU on binary voxel grids, and the Chamfer
distance between points sampled on the shapes' surfaces.

Everything here is NumPy / SciPy / scikit-image only, so that evaluation runs
without a deep-learning backend.
"""

import numpy as np
from scipy.spatial import cKDTree
from skimage import measure

from threedgan.volume_io import as_3d_volume


def _binary_volume(volume, threshold):
    """Returns one `volume` as a boolean (D, H, W) array of occupied voxels."""
    return as_3d_volume(volume) > threshold


def _volume_rows(volumes):
    """Returns `volumes` as (N, voxels) rows, a view where the layout allows."""
    volumes = np.asarray(volumes)
    if volumes.ndim == 5 and volumes.shape[-1] == 1:
        volumes = volumes[..., 0]
    if volumes.ndim != 4:
        raise ValueError(
            "Expected volumes of shape (N, D, H, W) or (N, D, H, W, 1), "
            f"got shape {volumes.shape}."
        )
    grid = volumes.shape[1:]
    return volumes.reshape(len(volumes), int(np.prod(grid))), grid


def _occupied_count(rows, threshold, chunk_size=128):
    """Number of occupied voxels in (N, voxels) rows, thresholded by chunks."""
    return sum(
        int(np.count_nonzero(rows[start : start + chunk_size] > threshold))
        for start in range(0, len(rows), chunk_size)
    )


def occupancy(volumes, threshold=0.5):
    """Mean fraction of occupied voxels over a set of volumes.

    Args:
        volumes: array of shape (N, D, H, W) or (N, D, H, W, 1), occupancy
            probabilities or 0/1 values.
        threshold: a voxel is occupied when its value is strictly greater.

    Returns:
        Python float in [0, 1] (NaN for an empty set).

    Raises:
        ValueError: if `volumes` does not have one of the accepted shapes.
    """
    rows, _ = _volume_rows(volumes)
    if rows.size == 0:
        return float("nan")
    return _occupied_count(rows, threshold) / rows.size


def iou_distance_matrix(a, b=None, threshold=0.5, chunk_size=128):
    """Pairwise 1 - IoU between two sets of voxel grids.

    Intersections are computed as a matrix product of the flattened binary
    grids, block by block: the inputs are thresholded block by block too, so
    beyond the inputs only `2 * chunk_size` grids are held at once as floats
    (a 128-grid block at 64^3 is 128 MiB). Two empty grids have IoU 1
    (distance 0): they are the same shape.

    Args:
        a: array of shape (N, D, H, W) or (N, D, H, W, 1), probabilities or
            0/1 values.
        b: array of shape (M, D, H, W) or (M, D, H, W, 1), or `None` to compare
            `a` with itself (only half of the blocks are then computed).
        threshold: a voxel is occupied when its value is strictly greater.
        chunk_size: number of grids per block of the matrix product.

    Returns:
        float64 array of shape (N, M) with values in [0, 1].

    Raises:
        ValueError: if the inputs have unaccepted shapes, different grid sizes,
            or `chunk_size` is not positive.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    symmetric = b is None
    rows_a, grid_a = _volume_rows(a)
    rows_b, grid_b = (rows_a, grid_a) if symmetric else _volume_rows(b)
    if grid_a != grid_b:
        raise ValueError(
            f"Both sets must share one grid size, got {grid_a} and {grid_b}."
        )
    # float32 sums of 0/1 products are exact integers up to 2**24 voxels
    # (256^3); larger grids need float64 to keep intersections exact.
    block_dtype = np.float32 if rows_a.shape[1] <= 2**24 else np.float64

    def binary_block(rows, start):
        return (rows[start : start + chunk_size] > threshold).astype(block_dtype)

    def occupied_counts(rows):
        counts = [
            np.count_nonzero(rows[start : start + chunk_size] > threshold, axis=1)
            for start in range(0, len(rows), chunk_size)
        ]
        return np.concatenate(counts + [np.zeros(0)]).astype(np.float64)

    counts_a = occupied_counts(rows_a)
    counts_b = counts_a if symmetric else occupied_counts(rows_b)
    intersections = np.empty((len(rows_a), len(rows_b)), dtype=np.float64)
    for column_start in range(0, len(rows_b), chunk_size):
        columns = slice(column_start, column_start + chunk_size)
        block_b = binary_block(rows_b, column_start)
        for row_start in range(0, len(rows_a), chunk_size):
            if symmetric and row_start > column_start:
                break
            rows = slice(row_start, row_start + chunk_size)
            block_a = binary_block(rows_a, row_start)
            block = block_a @ block_b.T
            intersections[rows, columns] = block
            if symmetric:
                intersections[columns, rows] = block.T

    unions = counts_a[:, None] + counts_b[None, :] - intersections
    iou = np.divide(
        intersections, unions, out=np.ones_like(intersections), where=unions > 0
    )
    return 1.0 - iou


def sample_surface_points(volume, count=2048, seed=0, threshold=0.5):
    """Samples points uniformly (by area) on the surface of one voxel shape.

    The binarised grid is padded by one empty voxel so that shapes touching
    the border still get a closed surface, meshed with marching cubes at
    level 0.5, and `count` points are drawn on the triangles with probability
    proportional to their area. Coordinates are divided by the largest grid
    side so that voxel `i` spans [i, i + 1) / size: points lie in [0, 1]^3
    and distances are comparable across resolutions.

    An empty grid has no surface; by convention all its points are placed at
    the centre (0.5, 0.5, 0.5) of the unit cube.

    Args:
        volume: array of shape (D, H, W) or (D, H, W, 1), probabilities or
            0/1 values.
        count: number of points.
        seed: seed of the random generator; the same seed and shape give the
            same points.
        threshold: a voxel is occupied when its value is strictly greater.

    Returns:
        float32 array of shape (count, 3) in the grid's (D, H, W) axis order.

    Raises:
        ValueError: if `volume` does not have one of the accepted shapes.
    """
    binary = _binary_volume(volume, threshold)
    if not binary.any():
        return np.full((count, 3), 0.5, dtype=np.float32)
    size = max(binary.shape)
    # Binarise before meshing so that generated probabilities and 0/1
    # references are meshed the same way, like the IoU distance sees them.
    padded = np.pad(binary.astype(np.float32), 1)
    vertices, faces, _, _ = measure.marching_cubes(padded, level=0.5)
    triangles = vertices[faces].astype(np.float64)
    edge_1 = triangles[:, 1] - triangles[:, 0]
    edge_2 = triangles[:, 2] - triangles[:, 0]
    areas = np.linalg.norm(np.cross(edge_1, edge_2), axis=1)

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u = rng.random(count)
    v = rng.random(count)
    # Folding (u, v) back into the triangle keeps the distribution uniform.
    outside = u + v > 1.0
    u[outside] = 1.0 - u[outside]
    v[outside] = 1.0 - v[outside]
    points = (
        triangles[chosen, 0]
        + u[:, None] * edge_1[chosen]
        + v[:, None] * edge_2[chosen]
    )
    # Padded index k is voxel k - 1, whose centre sits at (k - 0.5) / size.
    return ((points - 0.5) / size).astype(np.float32)


def surface_point_sets(volumes, count=2048, seed=0, threshold=0.5):
    """Samples surface points for every shape of a set.

    Every shape uses the same `seed`, so identical shapes get identical point
    sets (Chamfer distance exactly 0), as IoU would see them.

    Args:
        volumes: array of shape (N, D, H, W) or (N, D, H, W, 1).
        count: number of points per shape.
        seed: seed of the random generator used for each shape.
        threshold: a voxel is occupied when its value is strictly greater.

    Returns:
        float32 array of shape (N, count, 3).

    Raises:
        ValueError: if `volumes` does not have one of the accepted shapes.
    """
    rows, grid = _volume_rows(volumes)
    points = np.empty((len(rows), count, 3), dtype=np.float32)
    for index, row in enumerate(rows):
        points[index] = sample_surface_points(
            row.reshape(grid), count=count, seed=seed, threshold=threshold
        )
    return points


def _as_point_sets(points, name):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(
            f"Expected {name} of shape (N, points, 3), got shape {points.shape}."
        )
    return points


def _directed_nearest_squared(queries, targets, workers=-1, search_radius=0.2):
    """(N, M) matrix of mean over queries[i] of min squared distance to targets[j].

    All target sets go into one k-d tree, each translated along x far enough
    that a query copy placed at the same translation can only find its
    nearest neighbour among that one target set. One tree query per row then
    covers every pair in compiled code and can use several threads.

    The result is exact. Two measures only make the k-d tree faster (about
    1.5x on voxel-surface points): queries are visited in spatial order, and
    a first pass bounds the search to `search_radius` times the diagonal of
    the data, re-querying without bound only the few points farther away.
    """
    if len(queries) == 0 or len(targets) == 0:
        return np.zeros((len(queries), len(targets)))
    lower = np.minimum(queries.min(axis=(0, 1)), targets.min(axis=(0, 1)))
    upper = np.maximum(queries.max(axis=(0, 1)), targets.max(axis=(0, 1)))
    extent = upper - lower
    diagonal = np.linalg.norm(extent)
    # A query in the shared box is within |extent| of its own target copy and
    # more than that from any other copy.
    spacing = extent[0] + diagonal + 1.0
    offsets = np.zeros((len(targets), 3))
    offsets[:, 0] = spacing * np.arange(len(targets))
    tree = cKDTree((targets - lower + offsets[:, None, :]).reshape(-1, 3))
    point_count = queries.shape[1]

    result = np.empty((len(queries), len(targets)))
    for index, query in enumerate(queries):
        # The mean does not depend on point order; the tree's own leaf order
        # makes consecutive queries walk the same branches.
        query = query[cKDTree(query).indices] - lower
        copies = (query[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
        distances, _ = tree.query(
            copies, k=1, distance_upper_bound=search_radius * diagonal, workers=workers
        )
        far = ~np.isfinite(distances)
        if far.any():
            distances[far], _ = tree.query(copies[far], k=1, workers=workers)
        result[index] = np.square(distances).reshape(len(targets), point_count).mean(axis=1)
    return result


def chamfer_distance_matrix(points_a, points_b=None, workers=-1):
    """Pairwise Chamfer distance between two sets of point clouds.

    Chamfer(A, B) = mean over a in A of min over b in B of ||a - b||^2
                  + mean over b in B of min over a in A of ||b - a||^2,
    with squared Euclidean distances as in PointFlow's CD.

    Args:
        points_a: array of shape (N, P, 3).
        points_b: array of shape (M, Q, 3), or `None` to compare `points_a`
            with itself (each directed term is then computed once).
        workers: threads for the k-d tree queries, -1 for all cores.

    Returns:
        float64 array of shape (N, M).

    Raises:
        ValueError: if the inputs are not (N, P, 3) arrays.
    """
    points_a = _as_point_sets(points_a, "points_a")
    if points_b is None:
        directed = _directed_nearest_squared(points_a, points_a, workers=workers)
        distances = directed + directed.T
        np.fill_diagonal(distances, 0.0)
        return distances
    points_b = _as_point_sets(points_b, "points_b")
    forward = _directed_nearest_squared(points_a, points_b, workers=workers)
    backward = _directed_nearest_squared(points_b, points_a, workers=workers)
    return forward + backward.T


def mmd_cov(distance_sample_to_reference):
    """Minimum matching distance and coverage.

    Args:
        distance_sample_to_reference: array of shape (|S|, |R|), entry (i, j)
            the distance between sample i and reference j.

    Returns:
        dict with `mmd` (mean over references of the distance to the closest
        sample) and `cov` (fraction in [0, 1] of references that are the
        nearest reference of at least one sample; ties go to the lowest
        reference index).

    Raises:
        ValueError: if the matrix is not 2-D with both sides non-empty.
    """
    distances = np.asarray(distance_sample_to_reference, dtype=np.float64)
    if distances.ndim != 2 or 0 in distances.shape:
        raise ValueError(
            "Expected a non-empty (samples, references) matrix, "
            f"got shape {distances.shape}."
        )
    mmd = distances.min(axis=0).mean()
    covered = np.unique(distances.argmin(axis=1)).size
    return {"mmd": float(mmd), "cov": covered / distances.shape[1]}


def one_nna(d_ss, d_rr, d_sr):
    """Leave-one-out 1-nearest-neighbour accuracy on samples u references.

    Follows PointFlow: the joint distance matrix is stacked in the order
    [references; samples], its diagonal is set to +inf so that no shape is
    its own neighbour, and each shape is classified with the label of its
    nearest other shape. Ties go to the lowest index of that order, so a
    reference wins a tie with a sample.

    0.5 is ideal, 1.0 means the sets are separable. A sample set that copies
    the references scores near 0: each shape's nearest other shape is its
    twin at distance 0 in the other set (identical sets of distinct shapes
    score exactly 0).

    Args:
        d_ss: array (|S|, |S|) of sample-to-sample distances.
        d_rr: array (|R|, |R|) of reference-to-reference distances.
        d_sr: array (|S|, |R|) of sample-to-reference distances.

    Returns:
        Python float in [0, 1].

    Raises:
        ValueError: if the shapes of the matrices disagree or a set is empty.
    """
    d_ss = np.asarray(d_ss, dtype=np.float64)
    d_rr = np.asarray(d_rr, dtype=np.float64)
    d_sr = np.asarray(d_sr, dtype=np.float64)
    sample_count, reference_count = d_sr.shape if d_sr.ndim == 2 else (0, 0)
    if (
        sample_count == 0
        or reference_count == 0
        or d_ss.shape != (sample_count, sample_count)
        or d_rr.shape != (reference_count, reference_count)
    ):
        raise ValueError(
            "Expected non-empty d_ss (S, S), d_rr (R, R) and d_sr (S, R), got "
            f"{d_ss.shape}, {d_rr.shape} and {d_sr.shape}."
        )
    joint = np.block([[d_rr, d_sr.T], [d_sr, d_ss]])
    np.fill_diagonal(joint, np.inf)
    is_reference = np.concatenate(
        [np.ones(reference_count, dtype=bool), np.zeros(sample_count, dtype=bool)]
    )
    predicted = is_reference[joint.argmin(axis=1)]
    return float(np.mean(predicted == is_reference))


def _set_scores(joint_distances, sample_count, suffix):
    """MMD, COV and 1-NNA from a distance matrix over [samples; references]."""
    d_ss = joint_distances[:sample_count, :sample_count]
    d_rr = joint_distances[sample_count:, sample_count:]
    d_sr = joint_distances[:sample_count, sample_count:]
    scores = mmd_cov(d_sr)
    return {
        f"mmd_{suffix}": scores["mmd"],
        f"cov_{suffix}": scores["cov"],
        f"1nna_{suffix}": one_nna(d_ss, d_rr, d_sr),
    }


def _mean_pairwise_iou(d_ss):
    """Mean IoU over distinct pairs of samples, NaN with fewer than 2 samples."""
    if len(d_ss) < 2:
        return float("nan")
    upper = np.triu_indices(len(d_ss), k=1)
    return float(np.mean(1.0 - d_ss[upper]))


def _packed_grids(rows, threshold, chunk_size=128):
    """(N, voxels) rows thresholded and bit-packed by chunks to (N, voxels / 8) uint8."""
    return np.concatenate(
        [
            np.packbits(rows[start : start + chunk_size] > threshold, axis=1)
            for start in range(0, len(rows), chunk_size)
        ]
    )


def evaluate_sets(
    samples,
    references,
    distances=("iou", "chamfer"),
    points=2048,
    seed=0,
    threshold=0.5,
):
    """Compares a set of generated volumes with a set of reference volumes.

    Each distance is computed once over the union of both sets, which gives
    the three blocks needed by 1-NNA; repeated grids are measured once.

    Cost: the IoU part takes seconds even for 1000 shapes a side. The Chamfer
    part is exact nearest-neighbour search, about (|S| + |R|)^2 * `points`
    k-d tree queries: 100 vs 100 shapes at 2048 points is about 100 s of CPU
    time, shared by the cores (`workers=-1`).

    Args:
        samples: generated volumes, (|S|, D, H, W) or (|S|, D, H, W, 1),
            probabilities or 0/1 values.
        references: reference volumes on the same grid.
        distances: any of "iou" (1 - IoU of the binary grids) and "chamfer"
            (Chamfer distance of surface points).
        points: surface points per shape for "chamfer".
        seed: seed of the surface sampling.
        threshold: a voxel is occupied when its value is strictly greater.

    Returns:
        dict with, for each distance name `d` requested, `mmd_d`, `cov_d`
        (fraction in [0, 1]) and `1nna_d` (fraction in [0, 1]); and always
        `sample_occupancy`, `reference_occupancy` (mean fraction of occupied
        voxels), `mean_pairwise_iou_samples` (mean IoU over distinct pairs of
        samples: near 1 when the generator collapses to one shape, NaN with
        fewer than 2 samples), `sample_count` and `reference_count`.

    Raises:
        ValueError: on an unknown distance name, empty sets, or volumes of
            different grid sizes or unaccepted shapes.
    """
    distances = tuple(distances)
    unknown = set(distances) - {"iou", "chamfer"}
    if unknown:
        raise ValueError(f"Unknown distances {sorted(unknown)}; use 'iou', 'chamfer'.")
    sample_rows, sample_grid = _volume_rows(samples)
    reference_rows, reference_grid = _volume_rows(references)
    if len(sample_rows) == 0 or len(reference_rows) == 0:
        raise ValueError("Both the sample and the reference sets must be non-empty.")
    if sample_grid != reference_grid:
        raise ValueError(
            "Samples and references must share one grid size, got "
            f"{sample_grid} and {reference_grid}."
        )
    sample_count = len(sample_rows)
    results = {
        "sample_count": sample_count,
        "reference_count": len(reference_rows),
        "sample_occupancy": occupancy(samples, threshold=threshold),
        "reference_occupancy": occupancy(references, threshold=threshold),
    }

    # A collapsed generator repeats shapes: measure each distinct grid once and
    # copy its row and column. Identical grids get the same surface points,
    # so this gives exactly the matrices of the full computation. Bit-packed
    # grids keep the union of both sets at one bit a voxel.
    packed = np.concatenate(
        [_packed_grids(sample_rows, threshold), _packed_grids(reference_rows, threshold)]
    )
    _, first_index, inverse = np.unique(
        packed, axis=0, return_index=True, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    distinct = np.unpackbits(
        packed[first_index], axis=1, count=sample_rows.shape[1]
    ).reshape((len(first_index),) + sample_grid)
    del packed

    def expand(distinct_distances):
        return distinct_distances[np.ix_(inverse, inverse)]

    joint_iou = expand(iou_distance_matrix(distinct))
    if "iou" in distances:
        results.update(_set_scores(joint_iou, sample_count, "iou"))
    results["mean_pairwise_iou_samples"] = _mean_pairwise_iou(
        joint_iou[:sample_count, :sample_count]
    )

    if "chamfer" in distances:
        point_sets = surface_point_sets(distinct, count=points, seed=seed)
        joint_chamfer = expand(chamfer_distance_matrix(point_sets))
        results.update(_set_scores(joint_chamfer, sample_count, "chamfer"))
    return results
