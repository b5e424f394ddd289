"""Tests for threedgan.render: fast previews and PNG encoding."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from threedgan.render import encode_png, render_grid, render_strip, render_volume, save_png

SHARED_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "3DShapeNets-volumetric.zip"
CHAIR_MEMBER = "3DShapeNets/volumetric_data/chair/30/test/chair_000000000_1.mat"


def make_ball(size=32, radius=10.0):
    centres = np.indices((size, size, size)) + 0.5
    return (((centres - size / 2.0) ** 2).sum(axis=0) <= radius ** 2).astype(np.float32)


def make_box(size=32):
    volume = np.zeros((size, size, size), dtype=np.float32)
    volume[6:26, 10:22, 4:14] = 1.0
    return volume


def non_white_fraction(image):
    return float(np.mean(np.any(image < 250, axis=-1)))


def test_render_has_requested_size_and_dtype():
    image = render_volume(make_ball(), image_size=96)
    assert image.shape == (96, 96, 3)
    assert image.dtype == np.uint8


def test_render_is_not_blank_and_shaded():
    image = render_volume(make_ball())
    assert 0.05 < non_white_fraction(image) < 0.6
    # Shading and outlines give many tones, not a flat silhouette.
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_box_and_ball_render_differently():
    box_image = render_volume(make_box()).astype(int)
    ball_image = render_volume(make_ball()).astype(int)
    assert np.mean(np.abs(box_image - ball_image)) > 5


def test_channel_axis_and_probabilities_are_accepted():
    ball = make_ball()
    plain = render_volume(ball)
    with_channel = render_volume(ball[..., None] * 0.9)
    np.testing.assert_array_equal(plain, with_channel)


def test_threshold_controls_what_is_drawn():
    volume = make_ball() * 0.4
    assert non_white_fraction(render_volume(volume, threshold=0.5)) == 0.0
    assert non_white_fraction(render_volume(volume, threshold=0.3)) > 0.05


def test_empty_volume_gives_plain_background():
    image = render_volume(np.zeros((16, 16, 16)), background=(255, 255, 255))
    assert np.all(image == 255)


def test_non_cubic_and_large_volumes_render():
    volume = np.zeros((20, 40, 10), dtype=np.float32)
    volume[5:15, 5:35, 2:8] = 1
    assert non_white_fraction(render_volume(volume, image_size=64)) > 0.05
    big = np.zeros((64, 64, 64), dtype=np.float32)
    big[10:54, 10:54, 10:54] = 1
    assert non_white_fraction(render_volume(big, image_size=128)) > 0.2


def test_fit_to_object_enlarges_small_shapes():
    volume = np.zeros((64, 64, 64), dtype=np.float32)
    volume[30:34, 30:34, 30:34] = 1
    framed_grid = non_white_fraction(render_volume(volume, image_size=64))
    framed_object = non_white_fraction(render_volume(volume, image_size=64, fit_to_object=True))
    assert framed_object > 5 * framed_grid


def test_z_axis_points_up():
    # A thin vertical pole along z must render taller than wide.
    volume = np.zeros((32, 32, 32), dtype=np.float32)
    volume[15:17, 15:17, 2:30] = 1
    drawn = np.any(render_volume(volume, image_size=128) < 250, axis=-1)
    rows, columns = np.nonzero(drawn)
    assert np.ptp(rows) > 3 * np.ptp(columns)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        render_volume(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="shape"):
        render_volume(np.zeros((8, 8, 8, 3)))
    with pytest.raises(ValueError, match="image_size"):
        render_volume(make_ball(), image_size=0)


def test_grid_and_strip_tile_renders():
    volumes = [make_ball(), make_box(), make_ball()]
    grid = render_grid(volumes, image_size=48)
    assert grid.shape == (2 * 48, 2 * 48, 3)
    np.testing.assert_array_equal(grid[:48, :48], render_volume(volumes[0], image_size=48))
    np.testing.assert_array_equal(grid[:48, 48:], render_volume(volumes[1], image_size=48))
    assert np.all(grid[48:, 48:] == 255)  # the unused fourth tile
    strip = render_strip(np.stack(volumes), image_size=40)
    assert strip.shape == (40, 3 * 40, 3)
    with pytest.raises(ValueError, match="at least one"):
        render_grid([])


def test_png_encoding_and_saving(tmp_path):
    image = render_volume(make_box(), image_size=64)
    data = encode_png(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    reopened = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(reopened, image)

    path = save_png(image, tmp_path / "nested" / "folder" / "box.png")
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.size == (64, 64)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))


def test_real_chair_renders_upright():
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"shared 3DShapeNets archive not found at {SHARED_ARCHIVE}")
    with zipfile.ZipFile(SHARED_ARCHIVE) as archive:
        chair = scipy.io.loadmat(io.BytesIO(archive.read(CHAIR_MEMBER)))["instance"]
    assert chair.shape == (30, 30, 30)
    image = render_volume(chair, image_size=128)
    drawn = np.any(image < 250, axis=-1)
    assert 0.05 < drawn.mean() < 0.6
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    # Upright with z up: the chair is taller than wide on screen, and its
    # seat (the widest horizontal slab) is drawn in the lower half, below
    # the back.
    rows, columns = np.nonzero(drawn)
    assert np.ptp(rows) > np.ptp(columns)
    seat_height = int(np.argmax(chair.sum(axis=(0, 1))))
    seat_only = np.zeros_like(chair)
    seat_only[:, :, seat_height] = chair[:, :, seat_height]
    back_only = np.zeros_like(chair)
    back_only[:, :, seat_height + 6:] = chair[:, :, seat_height + 6:]
    seat_rows = np.nonzero(np.any(render_volume(seat_only, image_size=128) < 250, axis=-1))[0]
    back_rows = np.nonzero(np.any(render_volume(back_only, image_size=128) < 250, axis=-1))[0]
    assert back_rows.mean() < seat_rows.mean()  # image rows grow downwards
