"""Tests for threedgan.latent: sampling, interpolation, arithmetic."""

import numpy as np
import pytest

from threedgan.latent import interpolate_latents, latent_arithmetic, sample_latents


def test_sample_latents_shape_dtype_and_spread():
    latents = sample_latents(64, z_size=200, stddev=0.33, seed=1)
    assert latents.shape == (64, 200)
    assert latents.dtype == np.float32
    assert abs(latents.mean()) < 0.02
    assert latents.std() == pytest.approx(0.33, rel=0.05)


def test_sample_latents_is_deterministic_per_seed():
    first = sample_latents(4, z_size=16, stddev=1.0, seed=123)
    again = sample_latents(4, z_size=16, stddev=1.0, seed=123)
    other = sample_latents(4, z_size=16, stddev=1.0, seed=124)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    expected = np.random.default_rng(123).normal(0.0, 1.0, size=(4, 16)).astype(np.float32)
    np.testing.assert_array_equal(first, expected)


def test_sample_latents_rejects_bad_arguments():
    with pytest.raises(ValueError, match="count"):
        sample_latents(0, z_size=8, stddev=1.0)
    with pytest.raises(ValueError, match="z_size"):
        sample_latents(2, z_size=2.5, stddev=1.0)
    with pytest.raises(ValueError, match="stddev"):
        sample_latents(2, z_size=8, stddev=-1.0)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_endpoints_equal_inputs(method):
    z_start, z_end = sample_latents(2, z_size=200, stddev=0.33, seed=7)
    path = interpolate_latents(z_start, z_end, steps=7, method=method)
    assert path.shape == (7, 200)
    assert path.dtype == np.float32
    np.testing.assert_array_equal(path[0], z_start)
    np.testing.assert_array_equal(path[-1], z_end)


def test_linear_interpolation_is_evenly_spaced():
    path = interpolate_latents(np.zeros(3), np.array([4.0, 8.0, -4.0]), steps=5)
    np.testing.assert_allclose(path[1], [1.0, 2.0, -1.0])
    np.testing.assert_allclose(np.diff(path, axis=0), np.tile([[1.0, 2.0, -1.0]], (4, 1)), atol=1e-6)


def test_slerp_keeps_the_norm_where_linear_shrinks_it():
    z_start, z_end = sample_latents(2, z_size=200, stddev=1.0, seed=3)
    mean_norm = (np.linalg.norm(z_start) + np.linalg.norm(z_end)) / 2
    slerp_norms = np.linalg.norm(interpolate_latents(z_start, z_end, 9, method="slerp"), axis=1)
    linear_middle = np.linalg.norm(interpolate_latents(z_start, z_end, 9, method="linear")[4])
    np.testing.assert_allclose(slerp_norms, mean_norm, rtol=0.05)
    # Two random 200-D Gaussians are nearly orthogonal: the straight-line
    # midpoint is about 1/sqrt(2) as long.
    assert linear_middle < 0.8 * mean_norm


def test_slerp_falls_back_for_parallel_vectors():
    path = interpolate_latents(np.ones(4), 3 * np.ones(4), steps=3, method="slerp")
    np.testing.assert_allclose(path[1], 2 * np.ones(4))


def test_interpolation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        interpolate_latents(np.zeros(3), np.zeros(4), steps=3)
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_latents(np.zeros(3), np.ones(3), steps=1)
    with pytest.raises(ValueError, match="method"):
        interpolate_latents(np.zeros(3), np.ones(3), steps=3, method="cubic")


def test_latent_arithmetic():
    z_a, z_b, z_c = np.array([1.0, 2.0]), np.array([0.5, 0.5]), np.array([3.0, -1.0])
    result = latent_arithmetic(z_a, z_b, z_c)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, [3.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        latent_arithmetic(np.zeros(2), np.zeros(3), np.zeros(2))
