"""Outputs from a trained generator: samples, latent interpolation and shape arithmetic, as volumes, renders, meshes.

Every command saves the latent vectors it used (`latents.npy`), so any shape can be made again, and draws latents
from the prior in the run's `config.json`, the one the generator was trained with.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from threedgan.config import CONFIG_FILENAME, Config
from threedgan.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

VOLUME_FORMATS = ("npy", "mat")
PACKED_FORMAT = "npz"  # all samples in one file, thresholded and bit-packed: 32 KiB a 64³ shape, for evaluate.py
IMAGE_FORMATS = ("png",)
MESH_FORMATS = ("stl", "obj", "ply")
FORMATS = VOLUME_FORMATS + IMAGE_FORMATS + MESH_FORMATS + (PACKED_FORMAT,)
PACKED_FILENAME = "samples.npz"
LATENTS_FILENAME = "latents.npy"


@dataclass
class LoadedGenerator:
    config: Config
    generator: object
    batch_statistics: bool = True


def parse_formats(text: str) -> List[str]:
    """Splits `npy,png,stl` into a list, rejecting unknown formats with the list of known ones."""
    formats = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown --format {unknown[0] if unknown else text!r}; choose from {', '.join(FORMATS)}")
    return formats


def load_generator(weights_path: str, config_path: str = None) -> LoadedGenerator:
    """Rebuilds the generator from the run's `config.json` and loads its weights.

    Args:
        weights_path: `generator_weights.h5` from a run's output folder.
        config_path: the run's `config.json`; `None` looks beside the weights.

    Returns:
        A `LoadedGenerator` (config and model).

    Raises:
        WeightsError: missing or unreadable weights, or weights of another architecture.
        ConfigError: no `config.json` beside the weights and none given.
    """
    from threedgan.models import build_generator
    from threedgan.train import configure_precision
    from threedgan.weights import load_weights_h5

    if not os.path.exists(weights_path):
        raise WeightsError(f"weights file not found: {weights_path}")
    if config_path is None:
        config_path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), CONFIG_FILENAME)
        if not os.path.exists(config_path):
            raise ConfigError(f"no {CONFIG_FILENAME} beside {weights_path}; pass --config PATH")
    config = Config.load(config_path)
    configure_precision(config.replace(mixed_precision="float32"))
    generator = build_generator(config)
    load_weights_h5(generator, weights_path)
    return LoadedGenerator(config, generator)


def latent_from(spec: str, config: Config) -> np.ndarray:
    """A latent vector from an integer seed (drawn from the run's prior) or a `.npy` file (`file.npy` or `file.npy:K`).

    Raises:
        ConfigError: neither an integer nor a readable `.npy` file of a (z_size,) or (n, z_size) array.
    """
    from threedgan.latent import sample_latents

    try:
        return sample_latents(1, config.z_size, config.z_stddev, seed=int(spec))[0]
    except ValueError:
        pass
    path, _, row = spec.partition(".npy:")
    path = path + ".npy" if row else spec
    try:
        latents = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"latent {spec!r} is neither an integer seed nor a readable .npy file ({error})") from None
    latents = latents.reshape(-1, latents.shape[-1]) if latents.ndim else latents
    if latents.ndim != 2 or latents.shape[1] != config.z_size:
        raise ConfigError(f"{path}: expected latent vectors of length {config.z_size}, got shape {latents.shape}")
    index = int(row) if row else 0
    if not 0 <= index < len(latents):
        raise ConfigError(f"{path}: no latent vector {index} (the file holds {len(latents)})")
    return latents[index].astype(np.float32)


def write_outputs(
    volumes: np.ndarray,
    names: Sequence[str],
    output_dir: str,
    formats: Sequence[str],
    threshold: float = 0.5,
    voxel_size: float = 1.0,
    keep_largest_component: bool = False,
    image_size: int = 256,
) -> List[str]:
    """Writes each volume in each format as `<output_dir>/<name>.<format>` and returns the paths written.

    A volume with nothing above `threshold` gets no mesh (a warning says so) rather than stopping the others.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    if PACKED_FORMAT in formats:
        written.append(save_packed_samples(volumes, os.path.join(output_dir, PACKED_FILENAME), threshold))
    for volume, name in zip(volumes, names):
        base = os.path.join(output_dir, name)
        for fmt in (f for f in formats if f != PACKED_FORMAT):
            path = f"{base}.{fmt}"
            # Imported per format: a machine that only writes volumes needs neither Pillow nor trimesh.
            if fmt in VOLUME_FORMATS:
                from threedgan.volume_io import save_volume

                save_volume(volume, path, threshold=threshold)
            elif fmt in IMAGE_FORMATS:
                from threedgan.render import render_volume, save_png

                save_png(render_volume(volume, threshold=threshold, image_size=image_size), path)
            else:
                from threedgan.mesh import export_mesh, volume_to_mesh

                try:
                    mesh = volume_to_mesh(volume, threshold, voxel_size, keep_largest_component)
                except ValueError as error:
                    logger.warning("no mesh for %s: %s", name, error)
                    continue
                export_mesh(mesh, path)
            written.append(path)
    return written


def save_packed_samples(volumes: np.ndarray, path: str, threshold: float = 0.5) -> str:
    """Saves (n, D, H, W) volumes thresholded and bit-packed in one `.npz` (`packed` (n, D·H·W/8), `shape`)."""
    occupied = np.asarray(volumes) > threshold
    np.savez_compressed(path, packed=np.packbits(occupied.reshape(len(occupied), -1), axis=1), shape=np.array(occupied.shape))
    return path


def load_packed_samples(path: str) -> np.ndarray:
    """Reads a file from `save_packed_samples` back to uint8 (n, D, H, W) volumes of 0/1.

    Raises:
        ConfigError: the file is missing or not such a file.
    """
    try:
        with np.load(path, allow_pickle=False) as contents:
            packed, shape = contents["packed"], tuple(int(n) for n in contents["shape"])
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot read packed samples {path}: {error}".splitlines()[0]) from None
    return np.unpackbits(packed, axis=1, count=int(np.prod(shape[1:]))).reshape(shape)


def _generate(model: LoadedGenerator, latents: np.ndarray) -> np.ndarray:
    from threedgan.train import generate_volumes

    return generate_volumes(model.generator, latents, model.config.batch_size, model.batch_statistics)


def _save_latents(latents: np.ndarray, output_dir: str, filename: str = LATENTS_FILENAME) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, filename)
    np.save(path, latents.astype(np.float32))
    return path


def sample(model: LoadedGenerator, num: int, seed: int, output_dir: str, formats, grid: bool = False, **options) -> List[str]:
    """Generates `num` shapes from the prior with `seed`; writes `sample_NNN.<fmt>`, `latents.npy` and `grid.png`.

    Returns:
        The paths written.
    """
    from threedgan.latent import sample_latents
    from threedgan.render import render_grid, save_png

    latents = sample_latents(num, model.config.z_size, model.config.z_stddev, seed=seed)
    volumes = _generate(model, latents)
    written = [_save_latents(latents, output_dir)]
    written += write_outputs(volumes, [f"sample_{i:03d}" for i in range(num)], output_dir, formats, **options)
    if grid:
        path = os.path.join(output_dir, "grid.png")
        save_png(render_grid(volumes, threshold=options.get("threshold", 0.5), image_size=options.get("image_size", 256) // 2), path)
        written.append(path)
    return written


def interpolate(model: LoadedGenerator, start: str, end: str, steps: int, output_dir: str, formats, slerp=False, **options):
    """Walks the latent space from `start` to `end` (seeds or `.npy` files) in `steps` shapes.

    Writes `interpolation_KK.<fmt>` per step, `interpolation_strip.png` and `interpolation_latents.npy`.
    """
    from threedgan.latent import interpolate_latents
    from threedgan.render import render_strip, save_png

    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 for an interpolation, got {steps}")
    latents = interpolate_latents(
        latent_from(start, model.config), latent_from(end, model.config), steps, method="slerp" if slerp else "linear"
    )
    volumes = _generate(model, latents)
    written = [_save_latents(latents, output_dir, "interpolation_latents.npy")]
    written += write_outputs(volumes, [f"interpolation_{k:02d}" for k in range(steps)], output_dir, formats, **options)
    path = os.path.join(output_dir, "interpolation_strip.png")
    save_png(render_strip(volumes, threshold=options.get("threshold", 0.5), image_size=options.get("image_size", 256) // 2), path)
    return written + [path]


def arithmetic(model: LoadedGenerator, a: str, b: str, c: str, output_dir: str, formats, **options):
    """Shape arithmetic as in the paper: z_a − z_b + z_c. Writes the three operands and the result, and a strip."""
    from threedgan.latent import latent_arithmetic
    from threedgan.render import render_strip, save_png

    z_a, z_b, z_c = (latent_from(spec, model.config) for spec in (a, b, c))
    latents = np.stack([z_a, z_b, z_c, latent_arithmetic(z_a, z_b, z_c)])
    volumes = _generate(model, latents)
    names = ["arithmetic_a", "arithmetic_b", "arithmetic_c", "arithmetic_result"]
    written = [_save_latents(latents, output_dir, "arithmetic_latents.npy")]
    written += write_outputs(volumes, names, output_dir, formats, **options)
    path = os.path.join(output_dir, "arithmetic_strip.png")
    save_png(render_strip(volumes, threshold=options.get("threshold", 0.5), image_size=options.get("image_size", 256) // 2), path)
    return written + [path]
