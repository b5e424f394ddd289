"""Tests for threedgan.mesh: marching cubes meshes for viewing and printing."""

import numpy as np
import pytest
import trimesh

from threedgan.mesh import export_mesh, volume_to_mesh


def make_ball(size=40, radius=12.0):
    centres = np.indices((size, size, size)) + 0.5
    return (((centres - size / 2.0) ** 2).sum(axis=0) <= radius ** 2).astype(np.float32)


def make_box():
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[2:12, 3:15, 4:18] = 1.0
    return volume


def test_ball_mesh_is_watertight_with_analytic_volume():
    mesh = volume_to_mesh(make_ball(), voxel_size=2.0)
    assert mesh.is_watertight
    assert mesh.is_winding_consistent
    expected = 4.0 / 3.0 * np.pi * (12.0 * 2.0) ** 3
    assert mesh.volume > 0
    assert mesh.volume == pytest.approx(expected, rel=0.03)
    np.testing.assert_allclose(mesh.bounds, [[16.0] * 3, [64.0] * 3], atol=0.5)


def test_box_mesh_matches_voxel_extent():
    mesh = volume_to_mesh(make_box(), voxel_size=1.5)
    assert mesh.is_watertight
    # Voxel i spans [i, i+1] * voxel_size.
    np.testing.assert_allclose(mesh.bounds, [[3.0, 4.5, 6.0], [18.0, 22.5, 27.0]], atol=1e-6)
    # Marching cubes bevels the edges slightly, so a little under 10*12*14.
    assert mesh.volume == pytest.approx(10 * 12 * 14 * 1.5 ** 3, rel=0.03)
    assert mesh.volume < 10 * 12 * 14 * 1.5 ** 3


def test_solid_touching_the_border_is_closed():
    mesh = volume_to_mesh(np.ones((6, 6, 6, 1), dtype=np.float32))
    assert mesh.is_watertight
    assert mesh.volume > 0
    np.testing.assert_allclose(mesh.bounds, [[0.0] * 3, [6.0] * 3], atol=1e-6)


def test_keep_largest_component_removes_specks():
    volume = make_box()
    volume[16:18, 16:18, 0:2] = 1.0  # a separate floating speck
    assert volume_to_mesh(volume).body_count == 2
    mesh = volume_to_mesh(volume, keep_largest_component=True)
    assert mesh.body_count == 1
    assert mesh.is_watertight
    assert mesh.bounds[0][2] == pytest.approx(4.0)  # the speck started at z = 0


def test_keep_largest_component_keeps_cavities():
    ball = make_ball()
    centres = np.indices(ball.shape) + 0.5
    ball[((centres - 20.0) ** 2).sum(axis=0) <= 6.0 ** 2] = 0.0
    solid_volume = volume_to_mesh(ball).volume
    assert volume_to_mesh(ball, keep_largest_component=True).volume == pytest.approx(solid_volume)


def test_probability_volumes_use_the_threshold():
    smooth = make_ball() * 0.8
    assert volume_to_mesh(smooth, threshold=0.5).is_watertight
    with pytest.raises(ValueError, match="empty volume"):
        volume_to_mesh(smooth, threshold=0.9)


def test_empty_and_non_3d_volumes_raise():
    with pytest.raises(ValueError, match="Cannot mesh an empty volume: no voxel is above the threshold 0.5"):
        volume_to_mesh(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="shape"):
        volume_to_mesh(np.ones((8, 8)))
    with pytest.raises(ValueError, match="voxel_size"):
        volume_to_mesh(make_box(), voxel_size=0)


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply"])
def test_export_round_trip(tmp_path, suffix):
    mesh = volume_to_mesh(make_box(), voxel_size=2.0)
    path = export_mesh(mesh, tmp_path / "out" / f"box{suffix}")
    assert path.is_file()
    loaded = trimesh.load(path, force="mesh")
    assert loaded.is_watertight
    assert loaded.volume == pytest.approx(mesh.volume, rel=1e-4)


def test_export_rejects_unknown_suffix(tmp_path):
    target = tmp_path / "box.fbx"
    with pytest.raises(ValueError, match="box.fbx"):
        export_mesh(volume_to_mesh(make_box()), target)
    assert not target.exists()
