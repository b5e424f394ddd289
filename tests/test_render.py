"""Tests for threedgan.render: fast previews and PNG encoding."""

import io
import time
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from threedgan.render import (
    VIEWS,
    caption_height,
    encode_png,
    framing_extent,
    render_grid,
    render_strip,
    render_views,
    render_volume,
    save_png,
)

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
    assert 0.05 < non_white_fraction(image) < 0.8  # framed: the ball's disc spans the image up to the margins
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


def drawn_box(image):
    """Height and width, as fractions of the image's, of the bounding box of the non-background pixels."""
    rows, columns = np.nonzero(np.any(image < 250, axis=-1))
    return (np.ptp(rows) + 1) / image.shape[0], (np.ptp(columns) + 1) / image.shape[1]


def test_framing_fits_small_shapes_to_the_image():
    volume = np.zeros((64, 64, 64), dtype=np.float32)
    volume[30:34, 30:34, 30:34] = 1
    framed = render_volume(volume, image_size=64)
    # The silhouette's larger side spans the image up to the 5 % margins, whatever the shape's size in the grid.
    assert max(drawn_box(framed)) >= 0.85
    whole_grid = non_white_fraction(render_volume(volume, image_size=64, fit_to_object=False))
    assert non_white_fraction(framed) > 5 * whole_grid


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_view_frames_a_thin_off_centre_shape(view):
    # A thin plank in a corner of the grid, like a wing: each view fills its image along its larger side.
    volume = np.zeros((64, 64, 64), dtype=np.uint8)
    volume[4:40, 50:53, 6:9] = 1
    box = drawn_box(render_views(volume, [view], image_size=96))
    assert max(box) >= 0.85, box


def test_same_scale_keeps_relative_sizes():
    small = np.zeros((64, 64, 64), dtype=np.uint8)
    small[28:36, 28:36, 28:36] = 1
    big = np.zeros((64, 64, 64), dtype=np.uint8)
    big[8:56, 8:56, 8:56] = 1
    own = render_grid([small, big], image_size=64)
    shared = render_grid([small, big], image_size=64, same_scale=True)
    assert max(drawn_box(own[:, :64])) >= 0.85 and max(drawn_box(own[:, 64:])) >= 0.85
    assert max(drawn_box(shared[:, 64:])) >= 0.85
    assert max(drawn_box(shared[:, :64])) == pytest.approx(max(drawn_box(shared[:, 64:])) / 6, abs=0.05)
    assert framing_extent([small, big]) == pytest.approx(6 * framing_extent([small]))


def test_captions_and_labelled_views():
    volumes = [make_ball(), make_box(), make_ball()]
    grid = render_grid(volumes, image_size=48, captions=["sample_000  2.1 %", "b", ""])
    band = caption_height(48)
    assert grid.shape == (2 * (48 + band), 2 * 48, 3)
    np.testing.assert_array_equal(grid[:48, :48], render_volume(volumes[0], image_size=48))
    assert np.any(grid[48:48 + band, :48] < 200), "the first caption is written under its tile"
    assert np.all(grid[2 * 48 + band:, :48] == 255), "an empty caption leaves its band blank"
    with pytest.raises(ValueError, match="captions"):
        render_grid(volumes, captions=["only one"])
    views = render_views(make_box(), ["front", "top"], image_size=40, labels=True)
    assert views.shape == (40 + caption_height(40), 80, 3)
    with pytest.raises(ValueError, match="Unknown view 'bottom'"):
        render_views(make_box(), ["bottom"])
    cells = render_grid(volumes, columns=3, image_size=32, views=["front", "side"])
    assert cells.shape == (32, 3 * 64, 3)


def test_framed_render_of_a_64_cube_takes_well_under_a_second():
    volume = np.zeros((64, 64, 64), dtype=np.float32)
    volume[10:54, 20:44, 4:60] = make_ball(64, 30)[10:54, 20:44, 4:60]
    render_volume(volume, image_size=256)
    start = time.perf_counter()
    render_volume(volume, image_size=256)
    assert time.perf_counter() - start < 0.5


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


def test_real_chair_renders_upright(shared_zip):
    with zipfile.ZipFile(shared_zip) as archive:
        chair = scipy.io.loadmat(io.BytesIO(archive.read(CHAIR_MEMBER)))["instance"]
    assert chair.shape == (30, 30, 30)
    image = render_volume(chair, image_size=128)
    drawn = np.any(image < 250, axis=-1)
    assert 0.05 < drawn.mean() < 0.6
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    # Upright with z up: the chair is taller than wide on screen, and its
    # seat (the widest horizontal slab) is drawn in the lower half, below
    # the back (parts drawn with the whole grid's framing, so they line up).
    rows, columns = np.nonzero(drawn)
    assert np.ptp(rows) > np.ptp(columns)
    seat_height = int(np.argmax(chair.sum(axis=(0, 1))))
    seat_only = np.zeros_like(chair)
    seat_only[:, :, seat_height] = chair[:, :, seat_height]
    back_only = np.zeros_like(chair)
    back_only[:, :, seat_height + 6:] = chair[:, :, seat_height + 6:]
    seat_rows = np.nonzero(np.any(render_volume(seat_only, image_size=128, fit_to_object=False) < 250, axis=-1))[0]
    back_rows = np.nonzero(np.any(render_volume(back_only, image_size=128, fit_to_object=False) < 250, axis=-1))[0]
    assert back_rows.mean() < seat_rows.mean()  # image rows grow downwards
