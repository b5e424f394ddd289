"""Fast NumPy renders of voxel volumes, for previews and TensorBoard images.

Occupied voxels are drawn as small cubes seen from a fixed three-quarter
view with an orthographic camera. Only the cube faces that point towards
the camera and border an empty voxel are drawn; each one is sampled densely
enough (in pixels) that it leaves no holes, the samples go through a
z-buffer, and the surviving pixels get Lambert shading from their face
normal, a mild depth cue and a dark outline wherever the depth jumps. A
64^3 volume renders in well under a second on a laptop CPU, against tens of
seconds for matplotlib's ``Axes3D.voxels``.

Axes follow 3DShapeNets: a volume is indexed ``[x, y, z]`` with z pointing
up, and voxel ``(i, j, k)`` fills the unit cube ``[i, i+1] x [j, j+1] x
[k, k+1]``.
"""

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

from threedgan.volume_io import as_3d_volume


def render_volume(
    volume,
    threshold=0.5,
    image_size=256,
    elevation=30.0,
    azimuth=-135.0,
    color="#6b9fd6",
    background=(255, 255, 255),
    outline=True,
    supersample=2,
    margin=0.05,
    fit_to_object=False,
):
    """Renders a voxel volume as a shaded three-quarter view.

    The whole grid (not just the occupied part) is fitted into the image,
    so renders of volumes of one size share a scale and framing, which keeps
    grids and latent interpolation strips comparable.

    Args:
        volume: Array of shape `(D, H, W)` or `(D, H, W, 1)` holding
            occupancy probabilities or 0/1 values, indexed `[x, y, z]` with
            z up. The grid need not be a cube.
        threshold: Voxels with a value strictly above this are drawn.
        image_size: Width and height of the returned image, in pixels.
        elevation: Camera angle above the x-y plane, in degrees.
        azimuth: Camera angle around the z axis, in degrees, measured from
            +x towards +y (matplotlib's convention). The default looks at
            the front of an unrotated 3DShapeNets chair (rotation `_1`),
            whose back sits at high x, from its front-left.
        color: Base colour of the solid: a Pillow colour string (`"#rrggbb"`,
            `"steelblue"`) or an `(r, g, b)` tuple of ints in 0-255.
        background: Background colour, same forms as `color`.
        outline: Whether to draw dark lines along silhouettes and depth
            jumps; they make thin parts (chair legs) read at a glance.
        supersample: Render at this many times the resolution and
            box-filter down, for anti-aliased edges. 1 is fastest.
        margin: Fraction of the image left empty on every side.
        fit_to_object: Frame the occupied voxels' bounding box instead of
            the whole grid: bigger shapes, but the scale then changes from
            volume to volume.

    Returns:
        A `uint8` array of shape `(image_size, image_size, 3)`. An empty
        volume gives a plain background image.

    Raises:
        ValueError: If `volume` is not 3-D (or 4-D with one channel), or
            if `image_size` or `supersample` is not a positive integer.
    """
    occupied = _occupancy(volume, threshold)
    image_size = _positive_int(image_size, "image_size")
    supersample = _positive_int(supersample, "supersample")
    base_rgb = np.asarray(_parse_color(color), dtype=np.float32)
    background_rgb = np.asarray(_parse_color(background), dtype=np.float32)

    canvas_size = image_size * supersample
    view_direction, right, up = _camera_axes(elevation, azimuth)

    # Orthographic scale that fits the projected bounding box of the whole
    # grid by default, so framing does not jump as the shape changes.
    if fit_to_object and occupied.any():
        occupied_indices = np.argwhere(occupied)
        box_low, box_high = occupied_indices.min(axis=0), occupied_indices.max(axis=0) + 1
    else:
        box_low, box_high = np.zeros(3, dtype=np.int64), np.array(occupied.shape)
    corners = np.array(
        [[x, y, z] for x in (box_low[0], box_high[0])
         for y in (box_low[1], box_high[1]) for z in (box_low[2], box_high[2])],
        dtype=np.float64,
    )
    corner_x = corners @ right
    corner_y = corners @ up
    extent = max(np.ptp(corner_x), np.ptp(corner_y), 1e-9)
    pixels_per_unit = canvas_size * (1.0 - 2.0 * margin) / extent
    offset_x = canvas_size / 2.0 - pixels_per_unit * (corner_x.max() + corner_x.min()) / 2.0
    offset_y = canvas_size / 2.0 + pixels_per_unit * (corner_y.max() + corner_y.min()) / 2.0

    depth_buffer = np.full(canvas_size * canvas_size, np.inf)
    normal_buffer = np.full(canvas_size * canvas_size, -1, dtype=np.int8)

    # Samples per face edge: spacing below ~0.7 px guarantees every pixel
    # under a face receives at least one sample.
    samples_per_edge = max(1, int(math.ceil(pixels_per_unit / 0.7)))
    sample_steps = (np.arange(samples_per_edge) + 0.5) / samples_per_edge

    padded = np.pad(occupied, 1)
    core = (slice(1, -1),) * 3
    normals = []
    pixel_ids_parts, depth_parts, normal_parts = [], [], []
    for axis in range(3):
        for sign in (1, -1):
            normal = np.zeros(3)
            normal[axis] = sign
            if normal @ view_direction <= 1e-9:
                continue  # Back faces are always hidden by a front face.
            normal_id = len(normals)
            normals.append(normal)
            neighbour = tuple(
                slice(1 + sign, padded.shape[a] - 1 + sign) if a == axis else core[a]
                for a in range(3)
            )
            exposed = occupied & ~padded[neighbour]
            voxel_corners = np.argwhere(exposed).astype(np.float64)
            if voxel_corners.size == 0:
                continue
            if sign > 0:
                voxel_corners[:, axis] += 1.0
            # The two in-plane axes of the face, sampled on a regular grid.
            axis_a, axis_b = [a for a in range(3) if a != axis]
            in_plane = np.zeros((samples_per_edge * samples_per_edge, 3))
            in_plane[:, axis_a] = np.repeat(sample_steps, samples_per_edge)
            in_plane[:, axis_b] = np.tile(sample_steps, samples_per_edge)
            # Projection is linear, so project face origins and in-face
            # offsets separately and add them: far cheaper than projecting
            # every sample.
            screen_x = (voxel_corners @ right)[:, None] + (in_plane @ right)[None, :]
            screen_y = (voxel_corners @ up)[:, None] + (in_plane @ up)[None, :]
            depth = -((voxel_corners @ view_direction)[:, None]
                      + (in_plane @ view_direction)[None, :])
            column = np.floor(offset_x + pixels_per_unit * screen_x).astype(np.int64).ravel()
            row = np.floor(offset_y - pixels_per_unit * screen_y).astype(np.int64).ravel()
            inside = (column >= 0) & (column < canvas_size) & (row >= 0) & (row < canvas_size)
            pixel_ids_parts.append((row * canvas_size + column)[inside])
            depth_parts.append(depth.ravel()[inside])
            normal_parts.append(np.full(inside.sum(), normal_id, dtype=np.int8))

    if pixel_ids_parts:
        pixel_ids = np.concatenate(pixel_ids_parts)
        depths = np.concatenate(depth_parts)
        normal_ids = np.concatenate(normal_parts)
        np.minimum.at(depth_buffer, pixel_ids, depths)
        winners = depths <= depth_buffer[pixel_ids]
        normal_buffer[pixel_ids[winners]] = normal_ids[winners]

    depth_buffer = depth_buffer.reshape(canvas_size, canvas_size)
    normal_buffer = normal_buffer.reshape(canvas_size, canvas_size)
    covered = normal_buffer >= 0

    canvas = np.empty((canvas_size, canvas_size, 3), dtype=np.float32)
    canvas[:] = background_rgb
    if covered.any():
        canvas[covered] = _shade(
            base_rgb, normals, normal_buffer[covered], depth_buffer[covered],
            view_direction, right, up,
        )
        if outline:
            edges = _outline_mask(depth_buffer, covered, pixels_per_unit, width=supersample)
            canvas[edges] = base_rgb * 0.18

    if supersample > 1:
        canvas = canvas.reshape(image_size, supersample, image_size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_grid(volumes, columns=None, threshold=0.5, image_size=256, **render_kwargs):
    """Tiles renders of several volumes into one image, row by row.

    Args:
        volumes: A sequence of volumes, or an array of shape
            `(N, D, H, W)` or `(N, D, H, W, 1)`.
        columns: Number of tiles per row. Defaults to `ceil(sqrt(N))`.
        threshold: Occupancy threshold passed to `render_volume`.
        image_size: Side of each tile, in pixels.
        **render_kwargs: Further keyword arguments for `render_volume`
            (`elevation`, `azimuth`, `color`, ...).

    Returns:
        A `uint8` array of shape `(rows * image_size, columns * image_size,
        3)`. Unused tiles in the last row are left as background.

    Raises:
        ValueError: If `volumes` is empty, `columns` is not a positive
            integer, or a volume has the wrong shape.
    """
    volumes = list(volumes)
    if not volumes:
        raise ValueError("render_grid needs at least one volume, got none.")
    count = len(volumes)
    columns = int(math.ceil(math.sqrt(count))) if columns is None else _positive_int(columns, "columns")
    rows = int(math.ceil(count / columns))
    tiles = [
        render_volume(volume, threshold=threshold, image_size=image_size, **render_kwargs)
        for volume in volumes
    ]
    background = _parse_color(render_kwargs.get("background", (255, 255, 255)))
    grid = np.empty((rows * image_size, columns * image_size, 3), dtype=np.uint8)
    grid[:] = np.asarray(background, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        grid[row * image_size:(row + 1) * image_size,
             column * image_size:(column + 1) * image_size] = tile
    return grid


def render_strip(volumes, threshold=0.5, image_size=256, **render_kwargs):
    """Renders volumes side by side in a single row, e.g. a latent walk.

    Args:
        volumes: A sequence of volumes, or an array of shape
            `(N, D, H, W)` or `(N, D, H, W, 1)`.
        threshold: Occupancy threshold passed to `render_volume`.
        image_size: Side of each tile, in pixels.
        **render_kwargs: Further keyword arguments for `render_volume`.

    Returns:
        A `uint8` array of shape `(image_size, N * image_size, 3)`.

    Raises:
        ValueError: If `volumes` is empty or a volume has the wrong shape.
    """
    volumes = list(volumes)
    return render_grid(volumes, columns=max(len(volumes), 1), threshold=threshold,
                       image_size=image_size, **render_kwargs)


def encode_png(image):
    """Encodes an image as PNG bytes (e.g. for TensorBoard image summaries).

    Args:
        image: `uint8` array of shape `(H, W)`, `(H, W, 3)` or `(H, W, 4)`.

    Returns:
        The PNG file contents as `bytes`.

    Raises:
        ValueError: If `image` is not a `uint8` array of a supported shape.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png expects a uint8 image, got dtype {image.dtype}.")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(
            f"encode_png expects an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}."
        )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image, path):
    """Writes an image to a PNG file, creating its parent folder.

    Args:
        image: `uint8` array of shape `(H, W)`, `(H, W, 3)` or `(H, W, 4)`.
        path: Destination file path.

    Returns:
        The destination as a `pathlib.Path`.

    Raises:
        ValueError: If `image` is not a `uint8` array of a supported shape.
    """
    data = encode_png(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _occupancy(volume, threshold):
    volume = as_3d_volume(volume)
    if volume.dtype == bool:
        return volume
    return volume > threshold


def _positive_int(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _parse_color(color):
    if isinstance(color, str):
        return ImageColor.getrgb(color)[:3]
    rgb = tuple(color)
    if len(rgb) != 3 or not all(0 <= channel <= 255 for channel in rgb):
        raise ValueError(f"Colours must be a Pillow colour string or an (r, g, b) tuple in 0-255, got {color!r}.")
    return rgb


def _camera_axes(elevation, azimuth):
    elevation = math.radians(elevation)
    azimuth = math.radians(azimuth)
    # Unit vector from the object towards the camera; "right" and "up" span
    # the image plane (up is the world z axis tilted by the elevation).
    view_direction = np.array([
        math.cos(elevation) * math.cos(azimuth),
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
    ])
    right = np.array([-math.sin(azimuth), math.cos(azimuth), 0.0])
    up = np.cross(view_direction, right)
    return view_direction, right, up


def _shade(base_rgb, normals, normal_ids, depths, view_direction, right, up):
    # Key light from the upper left, slightly in front of the camera, so
    # the three visible cube faces get three clearly different tones.
    light = 0.91 * view_direction + 0.37 * up - 0.18 * right
    light /= np.linalg.norm(light)
    lambert = np.array([max(float(normal @ light), 0.0) for normal in normals])
    intensity = 0.25 + 1.0 * lambert[normal_ids]
    # A mild depth cue separates overlapping parts facing the same way
    # (a far chair leg behind a near one).
    depth_range = depths.max() - depths.min()
    if depth_range > 0:
        intensity = intensity * (1.0 - 0.2 * (depths - depths.min()) / depth_range)
    shaded = base_rgb[None, :] * intensity[:, None]
    return np.clip(shaded, 0, 255)


def _outline_mask(depth_buffer, covered, pixels_per_unit, width):
    # A neighbour counts as "behind" when its depth exceeds ours by more
    # than a flat face could change across the outline width, so tilted
    # faces do not draw lines on themselves.
    jump = 1.2 + 2.5 * width / pixels_per_unit
    filled_depth = np.where(covered, depth_buffer, np.inf)
    edges = np.zeros_like(covered)
    for distance in range(1, width + 1):
        for axis in (0, 1):
            for shift in (distance, -distance):
                neighbour = np.roll(filled_depth, shift, axis=axis)
                # np.roll wraps around; the canvas border is background
                # anyway (the margin), so wrapping is harmless there.
                edges |= neighbour > filled_depth + jump
    return edges & covered
