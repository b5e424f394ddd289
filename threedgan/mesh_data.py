"""Your own shapes: folders of meshes (.obj, .off, .stl, .ply, .glb) and .binvox files, voxelised for training.

Layout. `--data-dir` names a folder; each subfolder holding shape files is a category (files found at any depth
below it, so ShapeNet's `<synset>/<model>/models/model_normalized.obj` works as is), and shape files lying directly in
the folder form one category named after the folder. A category with `train/` and `test/` subfolders (ModelNet's
`chair/train/chair_0001.off` layout) has those two splits; otherwise all its files are the train split.

Grid. Shapes are put where 3DShapeNets puts them, so the networks see what the `.mat` path gives them: each shape is
centred on its bounding box and scaled so its longest side spans 30 − 2·margin voxels of a 30³ grid (3DShapeNets:
margin 3, longest side 24 voxels), keeping its proportions (`aspect="stretch"` scales each axis to that span). The
30³ grid is then padded to 32³, bit-packed and cached exactly like a `.mat` volume, and zoomed to 64³ a batch at a
time (`threedgan.data`). Coordinates are used as stored, z up as in 3DShapeNets and ModelNet; `up_axis="y"` turns y-up
models (ShapeNet, glTF) upright.

Voxelisation (solid: surface, then filled). A voxel is solid when its centre lies inside the shape (when the surface
passes right by the centre, when at least half the voxel does), which is what a 3DShapeNets grid holds: a grid meshed
by `threedgan.mesh.volume_to_mesh` comes back voxel for voxel. The inside is found at 3× the grid's resolution: the
surface is sampled densely (every 1/6 of a voxel), the voxels it touches are marked, and everything those voxels
enclose is filled (`scipy.ndimage.binary_fill_holes`). Parts thinner than a voxel (chair legs, wings, a single
sheet) would vanish under a centre rule, so voxels the surface passes through are kept wherever no inside voxel is
next to them, plus the voxels that join such thin parts to the body.

Holes and open meshes. Through-holes that belong to the shape (a torus's, a mug handle's) are kept: filling only
closes cavities that do not reach the outside. A closed mesh (every edge shared by two triangles) is filled as it is.
An open one (not watertight: cracks, seams, missing triangles) is filled as it is when that works; when its inside
leaked out through cracks narrower than about a voxel (the inside seen at the grid's own resolution went missing
at 3×), the cracks are sealed first by a morphological closing of the surface (fill `sealed`), and failing that the
shape is voxelised conservatively, every voxel its surface touches plus what those enclose (fill `conservative`, up
to a voxel fatter). Wider openings (a box missing a face, a cup, a sphere with a hole two voxels across) are
openings: the inside they expose stays empty and the shape keeps its surface, one voxel thick (fill `surface`). The
per-shape report says which fill each file got.

Bad files (unreadable, empty, a point cloud, all vertices in one point, NaN coordinates, more than `MAX_FACES`
triangles or `MAX_FILE_BYTES` bytes) raise `DataError` naming the file; with `skip_bad` they are left out and
counted. Results are cached like the `.mat` path's (keyed by every file's path, size and time stamp, the selection and
the voxelisation options), written atomically and only when the whole selection is done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import stat
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.ndimage

from threedgan.data import PADDED_SIDE, RAW_SIDE, VoxelDataset, choose_categories, default_cache_dir, write_cache
from threedgan.errors import DataError

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".off", ".stl", ".ply", ".glb")
VOXEL_SUFFIXES = (".binvox",)
SHAPE_SUFFIXES = MESH_SUFFIXES + VOXEL_SUFFIXES
SPLIT_FOLDERS = ("train", "test")
ASPECT_CHOICES = ("keep", "stretch")
UP_AXIS_CHOICES = ("z", "y")
DEFAULT_MARGIN = 3.0  # 3DShapeNets: the longest side spans 24 of 30 voxels

# Files larger than these are refused rather than risk exhausting memory in a worker.
MAX_FILE_BYTES = 1 << 30
MAX_FACES = 5_000_000
MAX_BINVOX_VOXELS = 512**3
# .binvox grids are meshed before voxelisation; above this side they are first max-pooled (any voxel set), which
# moves surfaces by at most a fraction of a voxel of the 30³ target.
MAX_BINVOX_SIDE_TO_MESH = 128

SUPERSAMPLE = 3  # odd, so one fine voxel sits at each coarse voxel's centre
SURFACE_SPACING = 0.5  # in fine voxels: samples this close leave no gap a 6-connected flood could pass
SEAL_ITERATIONS = (1, 2)  # closings tried, in fine voxels, when the fine fill leaked through a crack
PARALLEL_FROM = 32  # shapes; fewer are voxelised in this process unless `workers` says otherwise
CACHE_FORMAT_VERSION = 1
VOXELISER_VERSION = 1  # bump when the voxels a file gives change, so old caches are not reused

FILL_SOLID, FILL_SEALED, FILL_CONSERVATIVE, FILL_SURFACE = "solid", "sealed", "conservative", "surface"


@dataclass(frozen=True)
class VoxeliseOptions:
    """Where and how a shape goes into the grid.

    Attributes:
        margin: empty voxels between the shape's bounding box and the sides of the 30³ grid, before its one-voxel pad
            to 32³ (3DShapeNets: 3); the longest side spans `30 - 2 * margin` voxels.
        aspect: `"keep"` scales all axes alike (3DShapeNets), `"stretch"` scales each axis to the span.
        up_axis: `"z"` uses coordinates as stored (z up, like 3DShapeNets and ModelNet); `"y"` turns y-up models
            upright (+y becomes +z).
    """

    margin: float = DEFAULT_MARGIN
    aspect: str = "keep"
    up_axis: str = "z"

    def __post_init__(self):
        check_options(self.margin, self.aspect, self.up_axis)


def check_options(margin, aspect, up_axis) -> None:
    """Checks voxelisation options.

    Raises:
        DataError: margin outside [0, 14.5) (at least one voxel of span must remain), unknown aspect or up axis.
    """
    if not (isinstance(margin, (int, float)) and 0 <= margin < (RAW_SIDE - 1) / 2):
        raise DataError(f"mesh margin must be in [0, {(RAW_SIDE - 1) / 2}) voxels, got {margin!r}")
    if aspect not in ASPECT_CHOICES:
        raise DataError(f"mesh aspect must be one of {', '.join(ASPECT_CHOICES)}, got {aspect!r}")
    if up_axis not in UP_AXIS_CHOICES:
        raise DataError(f"mesh up axis must be one of {', '.join(UP_AXIS_CHOICES)}, got {up_axis!r}")


# ---------------------------------------------------------------------------------------------------------- reading


def is_shape_file(name: str) -> bool:
    return name.lower().endswith(SHAPE_SUFFIXES)


def read_shape(path: str):
    """Reads one mesh or `.binvox` file and checks it can be voxelised.

    Args:
        path: a `.obj`, `.off`, `.stl`, `.ply`, `.glb` or `.binvox` file. Scenes (glTF, multi-object OBJ) are merged
            into one mesh with their transforms applied.

    Returns:
        `("mesh", vertices (n, 3) float64, faces (m, 3) int64)` or `("grid", occupancy bool (a, b, c))`.

    Raises:
        DataError: the file is missing, unreadable, too large, empty, a point cloud, degenerate or has non-finite
            coordinates; the message starts with the path.
    """
    try:
        status = os.stat(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if not stat.S_ISREG(status.st_mode):
        from threedgan.safe_io import describe_mode

        # Never opened: a FIFO would block, a device (or a symlink to one) never end.
        raise DataError(f"{path}: is {describe_mode(status.st_mode)}, not a regular file")
    size = status.st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: file too large ({size / 2**20:.0f} MiB; at most {MAX_FILE_BYTES / 2**20:.0f} MiB)")
    if size == 0:
        raise DataError(f"{path}: empty file")
    if path.lower().endswith(VOXEL_SUFFIXES):
        return ("grid", _read_binvox(path))
    import trimesh

    try:
        mesh = trimesh.load_mesh(path, process=False)
    except Exception as error:  # each loader fails in its own way (ValueError, KeyError, IndexError, ...)
        raise DataError(f"{path}: cannot read mesh ({type(error).__name__}: {_reason(error)})") from None
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    check_mesh(vertices, faces, path)
    return ("mesh", vertices, faces)


def check_mesh(vertices: np.ndarray, faces: np.ndarray, name: str) -> None:
    """Raises `DataError` (message starting with `name`) for a mesh that cannot be voxelised."""
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise DataError(f"{name}: no triangles (an empty mesh or a point cloud)")
    if len(faces) > MAX_FACES:
        raise DataError(f"{name}: {len(faces):,} triangles, more than the {MAX_FACES:,} allowed (simplify the mesh)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{name}: faces refer to vertices that do not exist")
    used = vertices[np.unique(faces)]
    if not np.isfinite(used).all():
        raise DataError(f"{name}: non-finite vertex coordinates (NaN or infinity)")
    extent = used.max(axis=0) - used.min(axis=0)
    if not extent.max() > 0:
        raise DataError(f"{name}: degenerate mesh (all vertices in one point)")
    triangles = vertices[faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    doubled_areas = np.linalg.norm(normals, axis=1)
    if not doubled_areas.max() > 1e-12 * extent.max() ** 2:
        raise DataError(f"{name}: degenerate mesh (every triangle has zero area)")


def _read_binvox(path: str) -> np.ndarray:
    from trimesh.exchange import binvox

    try:
        with open(path, "rb") as handle:
            parsed = binvox.parse_binvox(handle, writeable=True)
        shape = tuple(int(side) for side in parsed.shape)
        # Checked before decoding: the run-length data of a huge grid is small, its expansion is not.
        if np.prod(shape, dtype=np.float64) > MAX_BINVOX_VOXELS:
            raise DataError(f"{path}: .binvox grid {shape} is too large (at most {MAX_BINVOX_VOXELS:,} voxels)")
        voxels = binvox.voxel_from_binvox(parsed.rle_data, parsed.shape, parsed.translate, parsed.scale)
        grid = np.asarray(voxels.matrix, dtype=bool)
    except DataError:
        raise
    except Exception as error:  # header and run-length errors vary in type
        raise DataError(f"{path}: cannot read .binvox file ({_reason(error)})") from None
    if grid.ndim != 3 or not grid.any():
        raise DataError(f"{path}: empty .binvox grid (no voxel set)")
    return grid


def _reason(error: Exception) -> str:
    # Some loaders raise with logging-style arguments, ("... %d into %s", a, b); show the formatted line.
    arguments = error.args
    if len(arguments) > 1 and isinstance(arguments[0], str) and "%" in arguments[0]:
        try:
            text = arguments[0] % tuple(arguments[1:])
        except (TypeError, ValueError):
            text = str(error)
    else:
        text = str(error)
    return (text.splitlines() or [""])[0][:200] or type(error).__name__


# ------------------------------------------------------------------------------------------------------ voxelising


def voxelise_mesh(vertices, faces, options: VoxeliseOptions = VoxeliseOptions(), side: int = RAW_SIDE):
    """Voxelises a triangle mesh as a solid into a `side`³ grid placed like 3DShapeNets' (see the module notes).

    Args:
        vertices: float array (n, 3).
        faces: int array (m, 3) of vertex indices. Winding and watertightness are not required.
        options: margin, aspect and up axis.
        side: the grid's side (30, the 3DShapeNets grid, before the pad to 32³).

    Returns:
        `(grid, fill)`: bool array (side, side, side) indexed `[x, y, z]`, z up, and how the inside was found:
        `"solid"`, `"sealed"` (cracks closed first), `"conservative"` (every touched voxel) or `"surface"`
        (nothing enclosed: an open mesh or a sheet, kept as its surface).

    Raises:
        DataError: the mesh is empty or degenerate (see `check_mesh`).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    check_mesh(vertices, faces, "mesh")
    placed = place_vertices(vertices[np.unique(faces)], vertices, options, side)
    k = SUPERSAMPLE
    fine_shape = (side * k,) * 3
    # Rounded so that faces meant to lie on a voxel boundary (a box, a mesh made from voxels) do not scatter
    # across it by float noise.
    surface_fine, offsets, counts = _sample_surface(np.round(placed * k, 6)[faces], fine_shape, k=k)
    surface = surface_fine.reshape(side, k, side, k, side, k).any(axis=(1, 3, 5))
    conservative = scipy.ndimage.binary_fill_holes(surface)
    wholly_inside = conservative & ~surface  # enclosed at the grid's resolution, not touched by the surface

    fill = FILL_SOLID
    inside_fine = scipy.ndimage.binary_fill_holes(surface_fine)
    inside = _centres_inside(inside_fine, surface_fine, offsets, counts, k)
    # A closed surface sampled this densely cannot leak, so only open meshes are checked for cracks.
    if not is_closed_surface(vertices, faces) and _leaked(inside, wholly_inside):
        for iterations in SEAL_ITERATIONS:
            inside_fine = scipy.ndimage.binary_fill_holes(_close(surface_fine, iterations))
            inside = _centres_inside(inside_fine, surface_fine, offsets, counts, k)
            if not _leaked(inside, wholly_inside):
                fill = FILL_SEALED
                break
        else:
            return conservative, FILL_CONSERVATIVE
    if fill == FILL_SOLID and not (inside_fine & ~surface_fine).any():
        fill = FILL_SURFACE
    return keep_thin_parts(inside, conservative), fill


def voxelise_grid(occupancy, options: VoxeliseOptions = VoxeliseOptions(), side: int = RAW_SIDE):
    """Voxelises an occupancy grid of any resolution (a `.binvox`) into the training grid, as the solid it is.

    The grid's surface (marching cubes at 0.5, so voxel `i` spans `[i, i+1]`) goes through `voxelise_mesh`: a grid
    and the mesh made from it give the same voxels, and a 30³ grid placed like 3DShapeNets' comes back unchanged.

    Args:
        occupancy: bool array (a, b, c).
        options, side: as for `voxelise_mesh`.

    Returns:
        As `voxelise_mesh`.

    Raises:
        DataError: the grid is empty.
    """
    from skimage import measure

    occupancy = np.asarray(occupancy, dtype=bool)
    if occupancy.ndim != 3 or not occupancy.any():
        raise DataError("empty voxel grid (no voxel set)")
    low = np.argwhere(occupancy).min(axis=0)
    high = np.argwhere(occupancy).max(axis=0) + 1
    occupancy = occupancy[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    factor = int(math.ceil(max(occupancy.shape) / MAX_BINVOX_SIDE_TO_MESH))
    if factor > 1:
        padded_shape = [int(math.ceil(n / factor)) * factor for n in occupancy.shape]
        occupancy = np.pad(occupancy, [(0, p - n) for p, n in zip(padded_shape, occupancy.shape)])
        occupancy = occupancy.reshape(padded_shape[0] // factor, factor, padded_shape[1] // factor, factor, -1, factor)
        occupancy = occupancy.any(axis=(1, 3, 5))
    vertices, faces, _, _ = measure.marching_cubes(np.pad(occupancy, 1).astype(np.float32), level=0.5)
    return voxelise_mesh(vertices - 0.5, faces, options, side)


def voxelise_file(path: str, options: VoxeliseOptions = VoxeliseOptions()):
    """Reads and voxelises one shape file into the padded 32³ grid training uses.

    Args:
        path: a mesh or `.binvox` file (see `read_shape`).
        options: margin, aspect and up axis.

    Returns:
        `(grid32, info)`: bool array (32, 32, 32), the 30³ voxelisation padded by one voxel like a `.mat` volume,
        and a dict with `faces` (triangles voxelised), `fill` (see `voxelise_mesh`) and `seconds`.

    Raises:
        DataError: see `read_shape`; the message names the file.
    """
    start = time.perf_counter()
    shape = read_shape(path)
    if shape[0] == "grid":
        grid, fill = voxelise_grid(shape[1], options)
        faces = 0
    else:
        grid, fill = voxelise_mesh(shape[1], shape[2], options)
        faces = len(shape[2])
    padded = np.pad(grid, (PADDED_SIDE - RAW_SIDE) // 2)
    return padded, {"faces": faces, "fill": fill, "seconds": time.perf_counter() - start}


def place_vertices(reference, vertices, options: VoxeliseOptions, side: int = RAW_SIDE) -> np.ndarray:
    """Moves `vertices` into grid coordinates (voxel `i` spans `[i, i+1]`), framing the bounding box of `reference`.

    The box is centred in the grid and scaled so its longest side (each side, with `aspect="stretch"`) spans
    `side - 2 * margin`; an axis along which the shape is flat stays flat, in the middle.
    """
    rotate = options.up_axis == "y"
    if rotate:  # +90° about x: +y becomes +z, +z becomes -y
        reference = reference[:, [0, 2, 1]] * [1, -1, 1]
        vertices = vertices[:, [0, 2, 1]] * [1, -1, 1]
    low, high = reference.min(axis=0), reference.max(axis=0)
    extent = high - low
    span = side - 2.0 * options.margin
    scale = np.full(3, span / extent.max())
    if options.aspect == "stretch":
        flat = extent <= 1e-9 * extent.max()
        scale = np.where(flat, scale, span / np.where(flat, 1.0, extent))
    return (vertices - (low + high) / 2.0) * scale + side / 2.0


def surface_voxels(triangles: np.ndarray, shape: Tuple[int, int, int], spacing: float = SURFACE_SPACING) -> np.ndarray:
    """Marks the voxels that points sampled on the triangles fall in.

    Each triangle is sampled on a barycentric lattice fine enough that neighbouring samples are at most `spacing`
    apart; at half a voxel they leave no gap a 6-connected flood fill could pass. Points on the grid's far faces
    are kept in the last voxel, so a margin of 0 still closes the surface.

    Args:
        triangles: float array (m, 3, 3) in voxel units.
        shape: the grid's shape.
        spacing: the largest distance between neighbouring samples, in voxels.

    Returns:
        bool array of `shape`.
    """
    return _sample_surface(triangles, shape, spacing)[0]


def _sample_surface(triangles, shape, spacing=SURFACE_SPACING, k=None):
    """`surface_voxels`, and with `k`: for every k-block's central voxel, the sum and count of the samples' offsets
    from that voxel's centre (where the surface passes through it)."""
    grid = np.zeros(shape, dtype=bool)
    limit = np.asarray(shape) - 1
    offsets = counts = None
    if k is not None:
        offsets = np.zeros(tuple(n // k for n in shape) + (3,))
        counts = np.zeros(tuple(n // k for n in shape), dtype=np.int64)
    edges = np.stack(
        [np.linalg.norm(triangles[:, (i + 1) % 3] - triangles[:, i], axis=1) for i in range(3)], axis=1
    ).max(axis=1)
    steps = np.maximum(1, np.ceil(edges / spacing)).astype(np.int64)
    for n in np.unique(steps):
        chosen = triangles[steps == n]
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        lattice = i + j <= n
        # Integer weights divided last: a point on a face lying on a voxel boundary stays exactly on it.
        wb = i[lattice].astype(np.float64)[None, :, None]
        wc = j[lattice].astype(np.float64)[None, :, None]
        wa = n - wb - wc
        # Bounded memory: at most about a million points at a time.
        per_chunk = max(1, (1 << 20) // wb.shape[1])
        for start in range(0, len(chosen), per_chunk):
            a, b, c = (chosen[start : start + per_chunk, corner][:, None, :] for corner in range(3))
            points = ((a * wa + b * wb + c * wc) / n).reshape(-1, 3)
            index = np.clip(np.floor(points).astype(np.int64), 0, limit)
            grid[index[:, 0], index[:, 1], index[:, 2]] = True
            if k is not None:
                central = np.all(index % k == k // 2, axis=1)
                block = tuple((index[central] // k).T)
                np.add.at(offsets, block, points[central] - index[central] - 0.5)
                np.add.at(counts, block, 1)
    return grid, offsets, counts


def keep_thin_parts(inside: np.ndarray, touched: np.ndarray) -> np.ndarray:
    """Adds to a centre-inside voxelisation the parts too thin to hold a voxel centre.

    Args:
        inside: bool grid, voxels whose centre is inside the shape.
        touched: bool grid, the conservative voxelisation (voxels the surface touches, and what they enclose).

    Returns:
        `inside`, plus touched voxels with no inside voxel among their 26 neighbours (thin parts: away from the
        body, the surface is the part), plus touched voxels next to both (where thin parts join the body). Touched
        voxels that merely skin the body are left out, so a solid does not grow by a voxel.
    """
    cube = np.ones((3, 3, 3), dtype=bool)
    near_inside = scipy.ndimage.binary_dilation(inside, cube)
    thin = touched & ~near_inside
    joints = touched & near_inside & scipy.ndimage.binary_dilation(thin, cube)
    return inside | thin | joints


def is_closed_surface(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether every edge is shared by exactly two triangles, vertices at the same place counting as one (as in
    STL files, which repeat them)."""
    _, same = np.unique(np.asarray(vertices), axis=0, return_inverse=True)
    faces = same.reshape(-1)[faces]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges[:, 0] * np.int64(len(vertices)) + edges[:, 1], return_counts=True)
    return bool(np.all(counts == 2))


def _leaked(inside: np.ndarray, wholly_inside: np.ndarray) -> bool:
    # Voxels enclosed at the grid's own resolution but outside at the fine one: a few are real gaps that the coarse
    # surface closed over; a body's whole interior going missing means the fine fill leaked through a crack.
    lost = np.count_nonzero(wholly_inside & ~inside)
    return lost > max(8, 0.25 * np.count_nonzero(wholly_inside))


def _centres_inside(inside_fine, surface_fine, offsets, counts, k):
    """Whether each voxel's centre is inside, read from the fine grid at the voxel's central fine voxel.

    Where the surface crosses that fine voxel, the fine grid cannot tell on which side of it the centre lies; the
    samples there say where the surface passes, and the centre is on the side of the fine neighbour facing away
    from it. Where that neighbour is crossed too (thin or folded parts), the voxel is inside when at least half of
    it is (crossed fine voxels counting half).
    """
    centre = (slice(k // 2, None, k),) * 3
    inside = inside_fine[centre].copy()
    crossed = np.argwhere(surface_fine[centre] & (counts > 0))
    if len(crossed) == 0:
        return inside
    where = tuple(crossed.T)
    towards_surface = offsets[where] / counts[where][:, None]
    size = np.abs(towards_surface).max(axis=1)
    on_surface = size < 0.05  # the surface passes through the centre itself: inside, like a boundary voxel
    step = -np.rint(towards_surface / np.maximum(size, 1e-12)[:, None]).astype(np.int64)
    neighbour = np.clip(crossed * k + k // 2 + step, 0, np.asarray(inside_fine.shape) - 1)
    neighbour = tuple(neighbour.T)
    side = inside_fine.shape[0] // k
    value = inside_fine.astype(np.float32) - 0.5 * surface_fine
    mostly = value.reshape(side, k, side, k, side, k).mean(axis=(1, 3, 5))[where] >= 0.5
    decided = np.where(surface_fine[neighbour], mostly, inside_fine[neighbour])
    inside[where] = on_surface | decided
    return inside


def _close(grid: np.ndarray, iterations: int) -> np.ndarray:
    # Padded so the closing's erosion does not eat surfaces lying on the grid's border.
    padded = np.pad(grid, iterations + 1)
    closed = scipy.ndimage.binary_closing(padded, np.ones((3, 3, 3), dtype=bool), iterations=iterations)
    core = slice(iterations + 1, -(iterations + 1))
    return closed[core, core, core] | grid


# ---------------------------------------------------------------------------------------------------------- folders


def holds_shapes(folder: str) -> bool:
    """Whether a folder holds at least one mesh or `.binvox` file at any depth."""
    for _, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        if any(is_shape_file(name) for name in files):
            return True
    return False


def list_shapes(root: str) -> Dict[Tuple[str, str], List[str]]:
    """The shape files of a folder by category and split (layout in the module notes).

    Args:
        root: the folder.

    Returns:
        `{(category, split): sorted paths relative to root}`, splits `"train"` and `"test"`.
    """
    members: Dict[Tuple[str, str], List[str]] = {}

    def add(category, split, relative_folder):
        for current, subfolders, files in os.walk(os.path.join(root, relative_folder)):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in files:
                if is_shape_file(name) and not name.startswith("."):
                    relative = os.path.relpath(os.path.join(current, name), root)
                    members.setdefault((category, split), []).append(relative)

    entries = sorted(os.listdir(root))
    folders = [name for name in entries if os.path.isdir(os.path.join(root, name)) and not name.startswith(".")]
    top_files = [name for name in entries if os.path.isfile(os.path.join(root, name)) and is_shape_file(name)]
    own_name = os.path.basename(os.path.abspath(root))
    if set(folders) & set(SPLIT_FOLDERS) and not top_files and set(folders) <= set(SPLIT_FOLDERS):
        # root/train/*.off, root/test/*.off: one category with splits
        for split in SPLIT_FOLDERS:
            if split in folders:
                add(own_name, split, split)
    else:
        if top_files:
            members[(own_name, "train")] = top_files
        for category in folders:
            has_splits = [s for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, category, s))]
            if has_splits:
                for split in has_splits:
                    add(category, split, os.path.join(category, split))
            else:
                add(category, "train", category)
    return {key: sorted(files) for key, files in members.items()}


def _select(root, members, categories, split, obj_ratio, max_samples):
    categories = choose_categories(sorted({category for category, _ in members}), categories, root)
    selected, labels = [], []
    for label, category in enumerate(categories):
        files = members.get((category, split), [])
        files = files[: int(obj_ratio * len(files))]
        if not files:
            if split == "test" and (category, "train") in members:
                raise DataError(
                    f"no test split for category {category!r} in {root}: put its shapes in "
                    f"{category}/train/ and {category}/test/ to have one"
                )
            raise DataError(f"no shape files for category {category!r}, split {split!r} in {root}")
        selected += files
        labels += [label] * len(files)
    if max_samples is not None and max_samples < len(selected):
        keep = np.linspace(0, len(selected) - 1, max_samples).round().astype(int)
        selected = [selected[i] for i in keep]
        labels = [labels[i] for i in keep]
    return list(categories), selected, labels


def _display_name(relative: str) -> str:
    # The part below the category (and split) folder: unique, and short in reports.
    parts = relative.split(os.sep)
    if len(parts) > 2 and parts[1] in SPLIT_FOLDERS:
        return "/".join(parts[2:])
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------------------------- loading


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_shape_dataset(
    root: str,
    categories: Sequence[str] = ("all",),
    split: str = "train",
    obj_ratio: float = 1.0,
    max_samples: Optional[int] = None,
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
    options: VoxeliseOptions = VoxeliseOptions(),
    skip_bad: bool = False,
    workers: Optional[int] = None,
    progress: bool = True,
) -> VoxelDataset:
    """Loads a folder of meshes and `.binvox` files as training volumes, voxelising on every core, with a cache.

    Args:
        root: the folder (layout in the module notes).
        categories: category names, or `["all"]`.
        split: `"train"` or `"test"`.
        obj_ratio: fraction of each category's sorted files to keep.
        max_samples: keep at most this many, evenly spaced over the selection.
        cache_dir: where voxelised selections and their per-shape reports go (default `~/.cache/threedgan`).
        use_cache: read and write the cache (and the report).
        options: margin, aspect and up axis (`VoxeliseOptions`).
        skip_bad: leave out files that cannot be voxelised (counted in a warning) instead of stopping at the first.
        workers: processes to voxelise in (default: every core this process may use, from `PARALLEL_FROM` shapes).
        progress: show a progress bar on stderr.

    Returns:
        A `VoxelDataset` (bit-packed padded 32³ volumes, names relative to their category folder).

    Raises:
        DataError: unknown category, no files, a bad file (unless `skip_bad`), or every file bad.
    """
    members = list_shapes(root)
    if not members:
        raise DataError(f"no mesh or .binvox files ({' '.join(SHAPE_SUFFIXES)}) found under {root}")
    category_names, selected, labels = _select(root, members, categories, split, obj_ratio, max_samples)
    cache_folder = cache_dir or default_cache_dir()
    key = _cache_key(root, selected, [category_names, split, obj_ratio, max_samples], options)
    cache_path = os.path.join(cache_folder, f"shapes-{key}.npz")
    if use_cache:
        cached = _read_cache(cache_path)
        if cached is not None:
            dataset, skipped = cached
            _report_skipped(skipped, len(selected), skip_bad, cached=True)
            return dataset

    paths = [os.path.join(root, relative) for relative in selected]
    rows, infos, errors = _voxelise_all(paths, options, skip_bad, workers, progress)
    kept = [i for i in range(len(paths)) if rows[i] is not None]
    if not kept:
        raise DataError(f"none of the {len(paths)} shape files could be voxelised; first: {errors[0][1]}")
    skipped = [(selected[i], message) for i, message in errors]
    packed = np.stack([rows[i] for i in kept])
    names = np.array([_display_name(selected[i]) for i in kept])
    dataset = VoxelDataset(packed, names, np.asarray([labels[i] for i in kept], dtype=np.int32), category_names)
    report_path = None
    if use_cache:  # the report lives beside the cache; without one, the log's summary is all
        report_path = os.path.join(cache_folder, f"shapes-{key}.csv")
        _write_report(report_path, selected, labels, category_names, infos, dict(errors))
    _log_timings(infos, selected, report_path)
    _report_skipped(skipped, len(selected), skip_bad, cached=False)
    if use_cache:
        write_cache(
            cache_path,
            dataset,
            skipped_files=np.array([name for name, _ in skipped], dtype=str),
            skipped_errors=np.array([message for _, message in skipped], dtype=str),
        )
    return dataset


def _voxelise_one(task):
    """Worker: `(index, path, options)` to `(index, packed row or None, info, error message or None)`."""
    index, path, options = task
    start = time.perf_counter()
    try:
        grid, info = voxelise_file(path, options)
    except DataError as error:
        return index, None, {"seconds": time.perf_counter() - start}, str(error).splitlines()[0]
    return index, np.packbits(grid), info, None


def _warm_up():
    # Imported before the first shape, so that the per-shape times report voxelising, not a worker's start.
    import skimage.measure  # noqa: F401
    import trimesh  # noqa: F401


def _voxelise_all(paths, options, skip_bad, workers, progress):
    if workers is None:
        # Starting a process costs about a second (imports); below a few dozen shapes one process is quicker.
        workers = default_workers() if len(paths) >= PARALLEL_FROM else 1
    workers = min(workers, len(paths))
    tasks = [(index, path, options) for index, path in enumerate(paths)]
    rows, infos, errors = [None] * len(paths), [None] * len(paths), []
    bar = _Progress(len(paths), f"voxelising {len(paths)} shapes on {workers} core{'s' * (workers > 1)}", progress)

    def collect(result):
        index, row, info, error = result
        infos[index] = info
        if error is not None:
            if not skip_bad:
                bar.close()
                raise DataError(f"{error} (pass --skip-bad to leave out files that cannot be voxelised)")
            errors.append((index, error))
        rows[index] = row
        bar.advance()

    if workers <= 1:
        for task in tasks:
            collect(_voxelise_one(task))
    else:
        # spawn, not fork: the caller may already run Keras/JAX/TensorFlow threads, which fork would copy mid-state.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_warm_up) as pool:
            for result in pool.imap_unordered(_voxelise_one, tasks, chunksize=1):
                collect(result)  # raising here leaves the with-block, which terminates the workers
    bar.close()
    errors.sort()
    return rows, infos, errors


class _Progress:
    """A one-line progress bar on stderr; where stderr is not a terminal, a line every tenth of the way."""

    def __init__(self, total, label, enabled=True):
        self.total, self.label, self.enabled = total, label, enabled
        self.done, self.start, self.last_tenth = 0, time.perf_counter(), 0
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.open = enabled

    def advance(self):
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else 0.0
        if self.tty:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                f"{rate:.1f}/s, {remaining:.0f} s left "
            )
            sys.stderr.flush()
        else:
            tenth = 10 * self.done // self.total
            if tenth > self.last_tenth:
                self.last_tenth = tenth
                print(f"{self.label}: {self.done}/{self.total} ({rate:.1f}/s)", file=sys.stderr, flush=True)

    def close(self):
        if self.open and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.open = False


def _log_timings(infos, selected, report_path):
    done = [(info["seconds"], name) for info, name in zip(infos, selected) if info is not None and "fill" in info]
    if not done:
        return
    seconds = np.array([s for s, _ in done])
    slowest = ", ".join(f"{name} {s:.2f} s" for s, name in sorted(done, reverse=True)[:3])
    logger.info(
        "voxelised %d shapes: %.3f s a shape (median), %.3f s mean, %.1f s of CPU in all; slowest: %s%s",
        len(done), np.median(seconds), seconds.mean(), seconds.sum(), slowest,
        f"; per-shape times in {report_path}" if report_path else "",
    )


def _report_skipped(skipped, total, skip_bad, cached):
    if not skipped:
        return
    if not skip_bad:
        # A cache made with skip_bad holds the good files only; without skip_bad the bad file is still an error.
        raise DataError(f"{skipped[0][1]} (pass --skip-bad to leave out files that cannot be voxelised)")
    listed = "; ".join(message for _, message in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    logger.warning(
        "skipped %d of %d shape files that cannot be voxelised%s: %s",
        len(skipped), total, " (as when the cache was made)" if cached else "", listed,
    )


def _cache_key(root, selected, selection, options) -> str:
    digest = hashlib.sha256()
    for relative in selected:
        stat = os.stat(os.path.join(root, relative))
        digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    fields = [
        CACHE_FORMAT_VERSION, VOXELISER_VERSION, os.path.abspath(root), digest.hexdigest(), selection,
        [float(options.margin), options.aspect, options.up_axis],
    ]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:24]


def _read_cache(cache_path):
    if not os.path.exists(cache_path):
        return None
    try:
        from threedgan.data import MAX_CACHE_BYTES
        from threedgan.safe_io import load_npz

        # Bounded like any other file: regular files only, each array checked before it is decompressed.
        cached = load_npz(cache_path, MAX_CACHE_BYTES, DataError, what="cache")
        dataset = VoxelDataset(
            cached["packed"], cached["names"], cached["labels"], [str(c) for c in cached["category_names"]]
        )
        skipped = list(zip(cached["skipped_files"].tolist(), cached["skipped_errors"].tolist()))
        logger.info("loaded %d voxelised shapes from cache %s", len(dataset), cache_path)
        return dataset, skipped
    except Exception as error:  # a damaged cache is rebuilt, never trusted
        logger.warning("ignoring unreadable cache %s (%s)", cache_path, error)
        return None


def _write_report(report_path, selected, labels, category_names, infos, errors) -> None:
    temporary = f"{report_path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(report_path), exist_ok=True)
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "category", "seconds", "faces", "fill", "error"])
            for index, (relative, info) in enumerate(zip(selected, infos)):
                info = info or {}
                writer.writerow([
                    relative, category_names[labels[index]], f"{info.get('seconds', float('nan')):.4f}",
                    info.get("faces", ""), info.get("fill", ""), errors.get(index, ""),
                ])
        os.replace(temporary, report_path)
    except OSError as error:
        logger.warning("could not write the voxelisation report %s (%s)", report_path, error)


# ----------------------------------------------------------------------------------------- export, pack, preview


def export_grids_as_meshes(
    data_dir: Optional[str],
    categories: Sequence[str],
    output_dir: str,
    splits: Sequence[str] = ("train", "test"),
    rotations: str = "canonical",
    file_format: str = "off",
    max_samples: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> int:
    """Writes 3DShapeNets grids as meshes, `<output_dir>/<category>/<split>/<model>_<rotation>.<format>`.

    Each 30³ grid goes through `threedgan.mesh.volume_to_mesh` in voxel units, so a mesh folder made here and read
    back through `load_shape_dataset` holds the same shapes as the `.mat` path (voxel for voxel, see the module
    notes); the layout is ModelNet's, so splits carry over.

    Args:
        data_dir: the 3DShapeNets data (folder, zip or packed `.npz` slice), see `threedgan.data.load_dataset`.
        categories: category names, or `["all"]`.
        output_dir: where the category folders go.
        splits: which splits to export.
        rotations: `"canonical"` (`_1` only) or `"all"`.
        file_format: `"off"`, `"obj"`, `"stl"`, `"ply"` or `"glb"`.
        max_samples: at most this many shapes per split (evenly spaced).
        cache_dir: the `.mat` path's cache folder.

    Returns:
        The number of files written.

    Raises:
        DataError: see `threedgan.data.load_dataset`; an unknown format.
    """
    from threedgan.data import load_dataset
    from threedgan.mesh import volume_to_mesh

    if f".{file_format}" not in MESH_SUFFIXES:
        raise DataError(f"mesh format must be one of {', '.join(s[1:] for s in MESH_SUFFIXES)}, got {file_format!r}")
    written = 0
    for split in splits:
        dataset = load_dataset(
            data_dir, categories, split=split, rotations=rotations, max_samples=max_samples, cache_dir=cache_dir
        )
        border = (PADDED_SIDE - RAW_SIDE) // 2
        bar = _Progress(len(dataset), f"exporting {split}: {len(dataset)} shapes")
        for index in range(len(dataset)):
            volume = dataset.volumes32([index])[0][border:-border, border:-border, border:-border]
            category = dataset.category_names[dataset.labels[index]]
            stem = os.path.splitext(str(dataset.names[index]))[0]
            path = os.path.join(output_dir, category, split, f"{stem}.{file_format}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            volume_to_mesh(volume).export(path, file_type=file_format)
            written += 1
            bar.advance()
        bar.close()
    return written


def write_packed_slice(path: str, datasets: Dict[str, VoxelDataset]) -> str:
    """Writes datasets as one `.npz` slice `--data-dir` reads (the format of `scripts/pack_slice.py`).

    Args:
        path: the `.npz` to write (atomically).
        datasets: `{split: dataset}`; each category goes under `<category>_<split>` (bit-packed rows) and
            `<category>_<split>_names`.

    Returns:
        `path`.
    """
    arrays = {}
    for split, dataset in datasets.items():
        for label, category in enumerate(dataset.category_names):
            rows = dataset.labels == label
            arrays[f"{category}_{split}"] = dataset.packed[rows]
            arrays[f"{category}_{split}_names"] = dataset.names[rows]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, path)
    return path


def render_mesh(vertices, faces, image_size=256, elevation=30.0, azimuth=-135.0, color="#d69a6b", margin=0.05):
    """Renders a triangle mesh as `threedgan.render.render_volume` renders voxels: same camera, light and outline.

    Args:
        vertices: float array (n, 3), z up.
        faces: int array (m, 3).
        image_size: width and height in pixels.
        elevation, azimuth: camera angles in degrees (see `render_volume`).
        color: base colour (Pillow colour string or RGB tuple).
        margin: fraction of the image left empty on every side.

    Returns:
        uint8 array (image_size, image_size, 3).
    """
    from threedgan.render import _camera_axes, _outline_mask, _parse_color

    supersample = 2
    canvas_size = image_size * supersample
    view, right, up = _camera_axes(elevation, azimuth)
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = vertices[np.asarray(faces)]
    screen = np.stack([triangles @ right, triangles @ up, -(triangles @ view)], axis=-1)  # x, y, depth
    low, high = screen[..., :2].reshape(-1, 2).min(axis=0), screen[..., :2].reshape(-1, 2).max(axis=0)
    pixels_per_unit = canvas_size * (1 - 2 * margin) / max((high - low).max(), 1e-9)
    pixel = (screen[..., :2] - (low + high) / 2) * pixels_per_unit + canvas_size / 2
    # Sample every triangle at under a pixel's spacing, through a z-buffer (as the voxel renderer samples faces).
    depth_buffer = np.full(canvas_size * canvas_size, np.inf)
    face_buffer = np.full(canvas_size * canvas_size, -1, dtype=np.int64)
    edges = np.stack([np.linalg.norm(pixel[:, (i + 1) % 3] - pixel[:, i], axis=1) for i in range(3)], 1).max(1)
    steps = np.maximum(1, np.ceil(edges / 0.7)).astype(np.int64)
    for n in np.unique(steps):
        chosen = np.flatnonzero(steps == n)
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        lattice = i + j <= n
        u, v = (i[lattice] / n)[None, :], (j[lattice] / n)[None, :]
        per_chunk = max(1, (1 << 20) // u.shape[1])
        for start in range(0, len(chosen), per_chunk):
            ids = chosen[start : start + per_chunk]
            p, d = pixel[ids], screen[ids, :, 2]
            x = p[:, 0, 0, None] + u * (p[:, 1, 0, None] - p[:, 0, 0, None]) + v * (p[:, 2, 0, None] - p[:, 0, 0, None])
            y = p[:, 0, 1, None] + u * (p[:, 1, 1, None] - p[:, 0, 1, None]) + v * (p[:, 2, 1, None] - p[:, 0, 1, None])
            depth = d[:, 0, None] + u * (d[:, 1, None] - d[:, 0, None]) + v * (d[:, 2, None] - d[:, 0, None])
            column = np.clip(np.floor(x).astype(np.int64), 0, canvas_size - 1).ravel()
            row = np.clip(np.floor(canvas_size - y).astype(np.int64), 0, canvas_size - 1).ravel()
            pixel_ids, depth = row * canvas_size + column, depth.ravel()
            owner = np.repeat(ids, u.shape[1])
            np.minimum.at(depth_buffer, pixel_ids, depth)
            winners = depth <= depth_buffer[pixel_ids]
            face_buffer[pixel_ids[winners]] = owner[winners]
    covered = face_buffer >= 0
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    normals *= np.where(normals @ view < 0, -1.0, 1.0)[:, None]  # two-sided: open meshes show their inner faces lit
    light = 0.91 * view + 0.37 * up - 0.18 * right
    light /= np.linalg.norm(light)
    intensity = 0.25 + np.maximum(normals @ light, 0.0)[face_buffer[covered]]
    depths = depth_buffer[covered]
    if depths.size and depths.max() > depths.min():
        intensity = intensity * (1.0 - 0.2 * (depths - depths.min()) / (depths.max() - depths.min()))
    base = np.asarray(_parse_color(color), dtype=np.float32)
    canvas = np.full((canvas_size * canvas_size, 3), 255.0, dtype=np.float32)
    canvas[covered] = np.clip(base[None] * intensity[:, None], 0, 255)
    canvas = canvas.reshape(canvas_size, canvas_size, 3)
    outline = _outline_mask(depth_buffer.reshape(canvas_size, canvas_size), covered.reshape(canvas_size, canvas_size),
                            pixels_per_unit, width=supersample)
    canvas[outline] = base * 0.18
    canvas = canvas.reshape(image_size, supersample, image_size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def preview(path: str, options: VoxeliseOptions = VoxeliseOptions(), image_size: int = 256):
    """What training will see for one shape file: its render beside the 64³ training volume's.

    Args:
        path: a mesh or `.binvox` file.
        options: margin, aspect and up axis.
        image_size: side of each of the two tiles.

    Returns:
        `(image, volume64, info)`: uint8 (tile + caption band, 2 * image_size, 3), the float32 (64, 64, 64)
        volume the networks get, and `voxelise_file`'s info.

    Raises:
        DataError: see `read_shape`.
    """
    from threedgan.data import upsample
    from threedgan.render import _tile, render_volume

    grid32, info = voxelise_file(path, options)
    volume64 = upsample(grid32[None])[0]
    shape = read_shape(path)
    if shape[0] == "grid":
        left = render_volume(shape[1], image_size=image_size, color="#d69a6b")
        what = f"{os.path.basename(path)}: {shape[1].shape[0]}x{shape[1].shape[1]}x{shape[1].shape[2]} grid"
    else:
        vertices, faces = shape[1], shape[2]
        if options.up_axis == "y":
            vertices = vertices[:, [0, 2, 1]] * [1, -1, 1]
        left = render_mesh(vertices, faces, image_size=image_size)
        what = f"{os.path.basename(path)}: {len(faces):,} triangles"
    right = render_volume(volume64, image_size=image_size)
    seen = f"training: 64^3, {volume64.mean():.1%} full, fill {info['fill']}"
    return _tile([left, right], 2, image_size, image_size, [what, seen], (255, 255, 255)), volume64, info
