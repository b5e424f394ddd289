"""Outputs from a trained generator: samples, latent interpolation and shape arithmetic, as volumes, renders, meshes.

Every command saves the latent vectors it used (`latents.npy`), so any shape can be made again, and draws latents
from the prior in the run's `config.json`, the one the generator was trained with. Latents are named one way each
(`latent_from`): `seed:3` is the latent drawn with seed 3, `sample:3` is row 3 of a `latents.npy` (the latent of
`sample_003`), `file.npy:3` row 3 of that file; a bare `3` is refused as ambiguous.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

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
# Caps on files read back: a samples.npz may hold at most 4096 shapes of 64³ (1 GiB unpacked, 128 MiB packed), its
# provenance a few KB; a latents file at most 256 MiB (over a million latents of 200). Larger declarations are
# refused before anything is decompressed or allocated.
MAX_PACKED_VOXELS = 4096 * 64**3
MAX_PROVENANCE_BYTES = 4 << 20
MAX_LATENTS_BYTES = 256 << 20
MAX_LATENT_SEED = 2**32 - 1


@dataclass
class LoadedGenerator:
    config: Config
    generator: object
    batch_statistics: bool = True
    weights_path: Optional[str] = None


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
    from threedgan.models import configure_precision
    from threedgan.weights import load_weights_h5

    from threedgan.run_set import check_weights_file

    if os.path.isdir(weights_path):
        # A run folder stands for its generator_weights.h5.
        weights_path = os.path.join(weights_path, "generator_weights.h5")
    if not os.path.exists(weights_path):
        from threedgan.checkpoint import newest_checkpoint_weights

        newest = newest_checkpoint_weights(weights_path)
        hint = f"; the run's newest checkpoint has its weights: pass --weights {newest}" if newest else ""
        raise WeightsError(f"weights file not found: {weights_path}{hint}")
    # A final save killed between two files leaves weights and config of two runs: refuse the mix before using it.
    check_weights_file(weights_path)
    if config_path is None:
        config_path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), CONFIG_FILENAME)
        if not os.path.exists(config_path):
            raise ConfigError(f"no {CONFIG_FILENAME} beside {weights_path}; pass --config PATH")
    config = Config.load(config_path)
    configure_precision(config.replace(mixed_precision="float32"))
    generator = build_generator(config)
    load_weights_h5(generator, weights_path)
    return LoadedGenerator(config, generator, weights_path=weights_path)


def latent_from(spec: str, config: Config, latents_path: Optional[str] = None) -> np.ndarray:
    """One latent vector from a reference that has one meaning only.

    Args:
        spec: `seed:N` (the latent `sample_latents(1, z_size, z_stddev, seed=N)` draws from the run's prior, i.e.
            `sample_000` of `--num 1 --seed N`); `sample:N` (row N of `latents_path`: the latent of `sample_00N` of
            the run that wrote that file); `file.npy` or `file.npy:N` (row N, default 0, of that file).
        config: the run's `Config` (`z_size`, `z_stddev`).
        latents_path: the `latents.npy` that `sample:N` reads.

    Returns:
        float32 array (z_size,).

    Raises:
        ConfigError: a bare integer (ambiguous between a seed and a sample), an unknown form, an unreadable file,
            vectors of the wrong length, or a row the file does not hold.
    """
    from threedgan.latent import sample_latents

    spec = str(spec).strip()
    kind, colon, value = spec.partition(":")
    if spec.lstrip("+-").isdigit():
        where = latents_path or LATENTS_FILENAME
        raise ConfigError(
            f"latent {spec!r} is ambiguous: write seed:{spec} for the latent drawn with seed {spec}, or sample:{spec} "
            f"for row {spec} (sample_{int(spec):03d}) of {where}"
        )
    if colon and kind in ("seed", "sample"):
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"latent {spec!r}: {kind}: takes an integer, e.g. {kind}:3") from None
        if kind == "seed" and not 0 <= number <= MAX_LATENT_SEED:
            raise ConfigError(f"latent {spec!r}: seeds run from 0 to {MAX_LATENT_SEED}")
        if kind == "seed":
            return sample_latents(1, config.z_size, config.z_stddev, seed=number)[0]
        if not latents_path:
            raise ConfigError(f"latent {spec!r} needs the latents.npy it indexes: pass --latents PATH")
        if not os.path.exists(latents_path):
            raise ConfigError(
                f"latent {spec!r}: {latents_path} not found; pass --latents PATH (the latents.npy beside the samples)"
            )
        return _latent_row(latents_path, number, config, spec)
    path, _, row = spec.partition(".npy:")
    path = path + ".npy" if row else spec
    if not path.endswith(".npy"):
        raise ConfigError(f"latent {spec!r}: write seed:N, sample:N, file.npy or file.npy:N")
    try:
        number = int(row) if row else 0
    except ValueError:
        raise ConfigError(f"latent {spec!r}: the row after .npy: must be an integer") from None
    return _latent_row(path, number, config, spec)


def _latent_row(path: str, index: int, config: Config, spec: str) -> np.ndarray:
    from threedgan.safe_io import load_npy

    if not os.path.exists(path):
        raise ConfigError(f"latent {spec!r}: cannot read {path} (not found)")
    # A regular file whose header declares no more than a latents file may hold; never unpickled.
    latents = load_npy(path, MAX_LATENTS_BYTES, ConfigError, what=f"latents file for {spec!r}")
    if latents.dtype.kind not in "fiu":
        raise ConfigError(f"{path}: expected real numbers, got a {latents.dtype} array")
    latents = latents.reshape(-1, latents.shape[-1]) if latents.ndim and latents.shape[-1] else latents
    if latents.ndim != 2 or latents.shape[1] != config.z_size:
        raise ConfigError(f"{path}: expected latent vectors of length {config.z_size}, got shape {latents.shape}")
    if not 0 <= index < len(latents):
        raise ConfigError(f"{path}: no latent vector {index} (the file holds {len(latents)}: 0 to {len(latents) - 1})")
    with np.errstate(over="ignore"):  # values beyond float32 become infinite, and are refused just below
        row = latents[index].astype(np.float32)
    if not np.isfinite(row).all():
        raise ConfigError(f"{path}: latent vector {index} holds NaN or infinite values (or values beyond float32)")
    return row


def _short(spec: str) -> str:
    """A latent reference as a caption: file paths lose their folders."""
    return os.path.basename(spec) if ".npy" in spec else spec


def write_outputs(
    volumes: np.ndarray,
    names: Sequence[str],
    output_dir: str,
    formats: Sequence[str],
    threshold: float = 0.5,
    voxel_size: float = 1.0,
    keep_largest_component: bool = False,
    image_size: int = 256,
    views: Optional[Sequence[str]] = None,
    same_scale: bool = False,
    provenance: Optional[dict] = None,
) -> List[str]:
    """Writes each volume in each format as `<output_dir>/<name>.<format>` and returns the paths written.

    A volume with nothing above `threshold` gets no mesh (a warning says so) rather than stopping the others.

    Args:
        volumes: (n, D, H, W) or (n, D, H, W, 1) occupancy probabilities.
        names: one file stem a volume.
        output_dir: where files go (created).
        formats: names from `FORMATS`; `npz` writes all volumes into one `samples.npz`.
        threshold: occupancy threshold of files, renders and meshes.
        voxel_size: mesh units a voxel.
        keep_largest_component: meshes keep only their largest connected part.
        image_size: side of a PNG (of each view with `views`).
        views: `None` for one three-quarter view a PNG, or names from `threedgan.render.VIEWS`, side by side.
        same_scale: draw every PNG at the scale of the largest shape instead of framing each to its own.
        provenance: what made the volumes (see `save_packed_samples`), stored in `samples.npz`.

    Returns:
        The paths written.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    if PACKED_FORMAT in formats:
        written.append(save_packed_samples(volumes, os.path.join(output_dir, PACKED_FILENAME), threshold, provenance))
    render_options = {"views": views}
    if same_scale and any(fmt in IMAGE_FORMATS for fmt in formats):
        from threedgan.render import framing_extent

        render_options["extent"] = framing_extent(volumes, threshold, views)
    for volume, name in zip(volumes, names):
        base = os.path.join(output_dir, name)
        for fmt in (f for f in formats if f != PACKED_FORMAT):
            path = f"{base}.{fmt}"
            # Imported per format: a machine that only writes volumes needs neither Pillow nor trimesh.
            if fmt in VOLUME_FORMATS:
                from threedgan.volume_io import save_volume

                save_volume(volume, path, threshold=threshold)
            elif fmt in IMAGE_FORMATS:
                _save_render(volume, path, threshold, image_size, **render_options)
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


def _save_render(volume, path, threshold, image_size, views=None, extent=None):
    from threedgan.render import render_views, render_volume, save_png

    if views:
        image = render_views(volume, views, threshold=threshold, image_size=image_size, labels=len(views) > 1, extent=extent)
    else:
        image = render_volume(volume, threshold=threshold, image_size=image_size, extent=extent)
    save_png(image, path)


def save_packed_samples(volumes: np.ndarray, path: str, threshold: float = 0.5, provenance: Optional[dict] = None) -> str:
    """Saves (n, D, H, W) volumes thresholded and bit-packed in one `.npz`, with what made them.

    Args:
        volumes: (n, D, H, W) or (n, D, H, W, 1) occupancy probabilities or 0/1 values.
        path: the `.npz` to write.
        threshold: a voxel is stored as occupied when its value is strictly greater.
        provenance: JSON-ready facts about the samples (`generation_provenance` gives the category, weights file,
            seed, ...); `count`, `threshold` and `shape` are always added. Read back with `read_provenance`.

    Returns:
        `path`. The file holds `packed` (n, D·H·W/8) uint8, `shape` and `provenance` (a JSON string).
    """
    occupied = np.asarray(volumes) > threshold
    if occupied.ndim == 5 and occupied.shape[-1] == 1:
        occupied = occupied[..., 0]
    facts = dict(provenance or {})
    facts.update(count=int(len(occupied)), threshold=float(threshold), shape=[int(n) for n in occupied.shape[1:]])
    np.savez_compressed(
        path,
        packed=np.packbits(occupied.reshape(len(occupied), -1), axis=1),
        shape=np.array(occupied.shape),
        provenance=np.array(json.dumps(facts, sort_keys=True)),
    )
    return path


def read_provenance(path: str) -> dict:
    """What made a `samples.npz` (see `save_packed_samples`); `{}` for files written before it was recorded.

    Raises:
        ConfigError: the file is missing, unreadable, or its provenance is not JSON.
    """
    from threedgan.safe_io import load_npz

    contents = load_npz(path, MAX_PROVENANCE_BYTES, ConfigError, what="packed samples", names=["provenance"])
    if "provenance" not in contents:
        return {}
    provenance = contents["provenance"]
    if provenance.ndim != 0 or provenance.dtype.kind not in "US":
        raise ConfigError(f"{path}: its provenance is a {provenance.dtype} array of shape {provenance.shape}, not a text")
    try:
        facts = json.loads(str(provenance))
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: its provenance is not JSON") from None
    return facts if isinstance(facts, dict) else {}


def generation_provenance(model: LoadedGenerator, mode: str, **facts) -> dict:
    """The provenance `samples.npz` records for shapes drawn from `model` (categories, weights, prior, BatchNorm)."""
    config = model.config
    record = dict(
        categories=list(config.categories),
        weights=os.path.abspath(model.weights_path) if model.weights_path else None,
        mode=mode,
        z_size=config.z_size,
        z_stddev=config.z_stddev,
        batchnorm="batch" if model.batch_statistics else "moving",
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    record.update(facts)
    return record


def load_packed_samples(path: str) -> np.ndarray:
    """Reads a file from `save_packed_samples` back to uint8 (n, D, H, W) volumes of 0/1.

    Raises:
        ConfigError: the file is missing or not such a file.
    """
    from threedgan.safe_io import load_npz

    contents = load_npz(
        path, MAX_PACKED_VOXELS // 8, ConfigError, what="packed samples", names=["packed", "shape"],
        member_limits={"shape": 1024},
    )
    missing = [name for name in ("packed", "shape") if name not in contents]
    if missing:
        raise ConfigError(f"{path} is not a samples file from generate.py --format npz (no {' or '.join(missing)} array)")
    packed, shape = contents["packed"], contents["shape"]
    if shape.dtype.kind not in "iu" or shape.shape != (4,) or (shape < 1).any():
        raise ConfigError(f"{path}: 'shape' must be 4 positive integers (count, D, H, W), got {shape.tolist()!r}")
    shape = tuple(int(n) for n in shape)
    voxels = shape[1] * shape[2] * shape[3]
    if shape[0] * voxels > MAX_PACKED_VOXELS:
        raise ConfigError(f"{path}: 'shape' {shape} declares more than {MAX_PACKED_VOXELS:,} voxels (4096 shapes of 64³)")
    expected = (shape[0], -(-voxels // 8))
    if packed.dtype != np.uint8 or packed.shape != expected:
        raise ConfigError(
            f"{path}: 'packed' is a {packed.dtype} array of shape {packed.shape}, but 'shape' {shape} needs uint8 "
            f"{expected}"
        )
    return np.unpackbits(packed, axis=1, count=voxels).reshape(shape)


def _generate(model: LoadedGenerator, latents: np.ndarray) -> np.ndarray:
    from threedgan.models import generate_volumes

    return generate_volumes(model.generator, latents, model.config.batch_size, model.batch_statistics)


def _save_latents(latents: np.ndarray, output_dir: str, filename: str = LATENTS_FILENAME) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, filename)
    np.save(path, latents.astype(np.float32))
    return path


def sample(
    model: LoadedGenerator,
    num: int,
    seed: int,
    output_dir: str,
    formats,
    grid: bool = False,
    captions: bool = True,
    **options,
) -> List[str]:
    """Generates `num` shapes from the prior with `seed`; writes `sample_NNN.<fmt>`, `latents.npy` and `grid.png`.

    Args:
        model: from `load_generator`.
        num: how many shapes.
        seed: latent seed: `sample_latents(num, z_size, z_stddev, seed)`.
        output_dir: where files go.
        formats: see `write_outputs`.
        grid: also write `grid.png` with every sample.
        captions: label the grid's tiles `sample:N` (the reference `--interpolate` takes) and occupancy.
        **options: `write_outputs`' keyword arguments (`threshold`, `image_size`, `views`, `same_scale`, ...).

    Returns:
        The paths written.
    """
    from threedgan.latent import sample_latents

    latents = sample_latents(num, model.config.z_size, model.config.z_stddev, seed=seed)
    volumes = _generate(model, latents)
    written = [_save_latents(latents, output_dir)]
    provenance = generation_provenance(model, "sample", seed=seed)
    written += write_outputs(
        volumes, [f"sample_{i:03d}" for i in range(num)], output_dir, formats, provenance=provenance, **options
    )
    if grid:
        threshold = options.get("threshold", 0.5)
        labels = None
        if captions:
            occupancy = (np.asarray(volumes) > threshold).reshape(len(volumes), -1).mean(axis=1)
            labels = [f"sample:{i}  {100 * fraction:.1f} %" for i, fraction in enumerate(occupancy)]
        path = os.path.join(output_dir, "grid.png")
        _save_strip_or_grid(volumes, path, labels, options, columns=None)
        written.append(path)
    return written


def _save_strip_or_grid(volumes, path, captions, options, columns):
    from threedgan.render import render_grid, save_png

    image = render_grid(
        volumes,
        columns=columns,
        threshold=options.get("threshold", 0.5),
        image_size=options.get("image_size", 256) // 2,
        captions=captions,
        same_scale=options.get("same_scale", False),
        views=options.get("views"),
    )
    save_png(image, path)


def interpolate(
    model: LoadedGenerator,
    start: str,
    end: str,
    steps: int,
    output_dir: str,
    formats,
    slerp=False,
    latents_path: Optional[str] = None,
    captions: bool = True,
    **options,
):
    """Walks the latent space from `start` to `end` in `steps` shapes.

    Args:
        model: from `load_generator`.
        start, end: latent references (`seed:N`, `sample:N`, `file.npy[:N]`; see `latent_from`).
        steps: shapes in the walk, ends included (at least 2).
        output_dir: where files go.
        formats: see `write_outputs`.
        slerp: spherical instead of linear interpolation.
        latents_path: the `latents.npy` that `sample:N` references read.
        captions: label the strip's tiles with the two references and each step's fraction t.
        **options: `write_outputs`' keyword arguments.

    Returns:
        The paths written: `interpolation_KK.<fmt>` per step, `interpolation_latents.npy`, `interpolation_strip.png`.

    Raises:
        ConfigError: fewer than 2 steps or a bad latent reference.
    """
    from threedgan.latent import interpolate_latents

    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 for an interpolation, got {steps}")
    latents = interpolate_latents(
        latent_from(start, model.config, latents_path),
        latent_from(end, model.config, latents_path),
        steps,
        method="slerp" if slerp else "linear",
    )
    volumes = _generate(model, latents)
    written = [_save_latents(latents, output_dir, "interpolation_latents.npy")]
    provenance = generation_provenance(model, "interpolate", start=start, end=end, slerp=bool(slerp))
    names = [f"interpolation_{k:02d}" for k in range(steps)]
    written += write_outputs(volumes, names, output_dir, formats, provenance=provenance, **options)
    labels = None
    if captions:
        labels = [f"t = {k / (steps - 1):.2f}" for k in range(steps)]
        labels[0], labels[-1] = _short(start), _short(end)
    path = os.path.join(output_dir, "interpolation_strip.png")
    _save_strip_or_grid(volumes, path, labels, options, columns=steps)
    return written + [path]


def arithmetic(
    model: LoadedGenerator,
    a: str,
    b: str,
    c: str,
    output_dir: str,
    formats,
    latents_path: Optional[str] = None,
    captions: bool = True,
    **options,
):
    """Shape arithmetic as in the paper: z_a - z_b + z_c. Writes the three operands and the result, and a strip.

    Args:
        model: from `load_generator`.
        a, b, c: latent references (`seed:N`, `sample:N`, `file.npy[:N]`; see `latent_from`).
        output_dir: where files go.
        formats: see `write_outputs`.
        latents_path: the `latents.npy` that `sample:N` references read.
        captions: label the strip `a: ...`, `- b: ...`, `+ c: ...`, `= a - b + c`.
        **options: `write_outputs`' keyword arguments.

    Returns:
        The paths written: `arithmetic_{a,b,c,result}.<fmt>`, `arithmetic_latents.npy` (the four latents, in that
        order) and `arithmetic_strip.png`.

    Raises:
        ConfigError: a bad latent reference.
    """
    from threedgan.latent import latent_arithmetic

    z_a, z_b, z_c = (latent_from(spec, model.config, latents_path) for spec in (a, b, c))
    latents = np.stack([z_a, z_b, z_c, latent_arithmetic(z_a, z_b, z_c)])
    volumes = _generate(model, latents)
    names = ["arithmetic_a", "arithmetic_b", "arithmetic_c", "arithmetic_result"]
    written = [_save_latents(latents, output_dir, "arithmetic_latents.npy")]
    provenance = generation_provenance(model, "arithmetic", a=a, b=b, c=c)
    written += write_outputs(volumes, names, output_dir, formats, provenance=provenance, **options)
    labels = [f"a: {_short(a)}", f"- b: {_short(b)}", f"+ c: {_short(c)}", "= a - b + c"] if captions else None
    path = os.path.join(output_dir, "arithmetic_strip.png")
    _save_strip_or_grid(volumes, path, labels, options, columns=4)
    return written + [path]
