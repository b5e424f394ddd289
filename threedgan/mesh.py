"""Turns voxel volumes into watertight triangle meshes for viewing or 3D printing.

Coordinates follow the renderer: a volume is indexed `[x, y, z]` (z up in
3DShapeNets data) and voxel `(i, j, k)` fills the cube `[i, i+1] x [j, j+1]
x [k, k+1]` times `voxel_size`, so a full `N^3` grid spans
`[0, N * voxel_size]` on every axis. With `voxel_size` in millimetres the
mesh is ready for a slicer, which reads STL units as millimetres.
"""

from pathlib import Path

import numpy as np
import scipy.ndimage
import trimesh
from skimage import measure

from threedgan.volume_io import as_3d_volume

MESH_SUFFIXES = (".stl", ".obj", ".ply")


def volume_to_mesh(volume, threshold=0.5, voxel_size=1.0, keep_largest_component=False):
    """Extracts the iso-surface of a voxel volume with marching cubes.

    The volume is padded by one empty voxel on every side first, so solids
    touching the grid border still get closed (watertight) surfaces.

    Args:
        volume: Array of shape `(D, H, W)` or `(D, H, W, 1)` of occupancy
            probabilities or 0/1 values.
        threshold: Iso-level of the surface; values above it are inside.
            Must lie strictly between the empty value 0 and the largest
            value in the volume.
        voxel_size: Edge length of one voxel in output units (millimetres
            for printing).
        keep_largest_component: Keep only the largest piece of solid
            (most voxels), dropping floating specks, which generated
            volumes often have and which printers cannot print. Pieces
            touching at an edge or corner count as one piece. Enclosed
            cavities are kept.

    Returns:
        A `trimesh.Trimesh` with outward-facing normals (positive volume).

    Raises:
        ValueError: If `volume` is not 3-D, `voxel_size` is not positive,
            or no voxel lies above `threshold`.
    """
    volume = as_3d_volume(volume)
    if not voxel_size > 0:
        raise ValueError(f"`voxel_size` must be positive, got {voxel_size!r}.")
    volume = volume.astype(np.float32)
    occupied = volume > threshold
    if not occupied.any():
        raise ValueError(f"Cannot mesh an empty volume: no voxel is above the threshold {threshold}.")
    # Empty space (padding, removed specks, NaNs) must sit below the
    # threshold, otherwise it would count as solid and surfaces would not
    # close there.
    padding_value = 0.0 if threshold > 0 else float(threshold) - 1.0
    if keep_largest_component:
        volume = _largest_component_only(volume, occupied, padding_value)

    padded = np.pad(np.nan_to_num(volume, nan=padding_value), 1, constant_values=padding_value)
    vertices, faces, _, _ = measure.marching_cubes(
        padded, level=float(threshold), allow_degenerate=False
    )
    # marching_cubes puts voxel centres at integer coordinates of the padded
    # grid; shift by the padding and half a voxel so voxel i spans [i, i+1].
    vertices = (vertices - 0.5) * float(voxel_size)

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def export_mesh(mesh, path):
    """Writes a mesh to `.stl`, `.obj` or `.ply`, creating the parent folder.

    Args:
        mesh: A `trimesh.Trimesh`, e.g. from `volume_to_mesh`.
        path: Destination file; its suffix picks the format.

    Returns:
        The destination as a `pathlib.Path`.

    Raises:
        ValueError: If the suffix is not one of `.stl`, `.obj`, `.ply`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(
            f"Unsupported mesh file type for {path}: use one of {', '.join(MESH_SUFFIXES)}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(str(path), file_type=suffix[1:])
    return path


def _largest_component_only(volume, occupied, empty_value):
    # Labelling voxels (rather than splitting the finished mesh) keeps the
    # inner walls of enclosed cavities, which a mesh split would treat as
    # separate bodies and drop.
    labels, count = scipy.ndimage.label(occupied, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return volume
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = labels == np.argmax(sizes)
    # Clear only the dropped solid voxels; empty voxels keep their values so
    # the kept surface is interpolated exactly as before.
    return np.where(occupied & ~keep, np.float32(empty_value), volume)
