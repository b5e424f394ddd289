"""Latent-space helpers: sampling, interpolation and vector arithmetic.

Pure NumPy, so they work with any Keras backend: feed the results to the
generator as a batch.
"""

import numpy as np


def sample_latents(count, z_size, stddev, seed=None):
    """Draws latent vectors from a zero-mean normal distribution.

    Callers pass `config.z_size` and `config.z_stddev`, so training and
    generation always draw from the same prior.

    Args:
        count: Number of vectors.
        z_size: Length of each vector.
        stddev: Standard deviation of every component.
        seed: An int for reproducible draws, `None` for fresh randomness,
            or a `numpy.random.Generator` to draw from.

    Returns:
        A `float32` array of shape `(count, z_size)`; the same `seed` always
        gives the same array.

    Raises:
        ValueError: If `count` or `z_size` is not a positive integer or
            `stddev` is negative.
    """
    count = _positive_int(count, "count")
    z_size = _positive_int(z_size, "z_size")
    if not stddev >= 0:
        raise ValueError(f"`stddev` must be non-negative, got {stddev!r}.")
    generator = np.random.default_rng(seed)
    return generator.normal(0.0, stddev, size=(count, z_size)).astype(np.float32)


def interpolate_latents(z_start, z_end, steps, method="linear"):
    """Walks from one latent vector to another in evenly spaced steps.

    Args:
        z_start: First latent vector, shape `(z_size,)` (any shape works;
            the result gains a leading `steps` axis).
        z_end: Last latent vector, same shape.
        steps: Number of vectors to return, both ends included (>= 2).
        method: `"linear"` for straight-line interpolation, or `"slerp"`
            for spherical interpolation, which keeps the vector length
            roughly constant: Gaussian latents live near a sphere, and the
            midpoint of a straight line falls inside it, where the
            generator saw few samples during training.

    Returns:
        A `float32` array of shape `(steps, z_size)` whose first row equals
        `z_start` and last row equals `z_end`.

    Raises:
        ValueError: If the shapes differ, `steps` is below 2, or `method`
            is unknown.
    """
    z_start = np.asarray(z_start, dtype=np.float64)
    z_end = np.asarray(z_end, dtype=np.float64)
    if z_start.shape != z_end.shape:
        raise ValueError(f"Latent vectors must have the same shape, got {z_start.shape} and {z_end.shape}.")
    steps = _positive_int(steps, "steps")
    if steps < 2:
        raise ValueError(f"`steps` must be at least 2 (both ends are included), got {steps}.")
    fractions = np.linspace(0.0, 1.0, steps).reshape((steps,) + (1,) * z_start.ndim)

    if method == "linear":
        path = (1.0 - fractions) * z_start + fractions * z_end
    elif method == "slerp":
        path = _slerp(z_start, z_end, fractions)
    else:
        raise ValueError(f"Unknown interpolation method {method!r}: use 'linear' or 'slerp'.")
    # Pin the ends so callers can rely on exact equality with the inputs.
    path[0], path[-1] = z_start, z_end
    return path.astype(np.float32)


def latent_arithmetic(z_a, z_b, z_c):
    """Computes `z_a - z_b + z_c`, as in "chair with arms - chair + table".

    Pass averages of several latent vectors per concept for cleaner
    results, as in the DCGAN and 3D-GAN papers.

    Args:
        z_a: Latent vector (or batch) to start from.
        z_b: Latent vector to subtract, same shape.
        z_c: Latent vector to add, same shape.

    Returns:
        A `float32` array of the common shape.

    Raises:
        ValueError: If the shapes differ (no silent broadcasting).
    """
    z_a, z_b, z_c = (np.asarray(z, dtype=np.float32) for z in (z_a, z_b, z_c))
    if not z_a.shape == z_b.shape == z_c.shape:
        raise ValueError(
            f"Latent vectors must have the same shape, got {z_a.shape}, {z_b.shape} and {z_c.shape}."
        )
    return z_a - z_b + z_c


def _slerp(z_start, z_end, fractions):
    start_norm = np.linalg.norm(z_start)
    end_norm = np.linalg.norm(z_end)
    if start_norm == 0 or end_norm == 0:
        # No direction to rotate from: fall back to a straight line.
        return (1.0 - fractions) * z_start + fractions * z_end
    cosine = np.clip(np.sum(z_start * z_end) / (start_norm * end_norm), -1.0, 1.0)
    angle = np.arccos(cosine)
    sine = np.sin(angle)
    if sine < 1e-6:
        # Parallel or opposite vectors: the great circle is undefined or
        # degenerate, and a straight line is as good as any.
        return (1.0 - fractions) * z_start + fractions * z_end
    return (np.sin((1.0 - fractions) * angle) / sine) * z_start + (np.sin(fractions * angle) / sine) * z_end


def _positive_int(value, name):
    if isinstance(value, bool) or not float(value).is_integer() or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)
