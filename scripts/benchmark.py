#!/usr/bin/env python3
"""Time threedgan's training iteration and its input pipeline.

    KERAS_BACKEND=jax python scripts/benchmark.py                      # GPU: batch 32, 64³, bf16 and fp32
    python scripts/benchmark.py --cpu                                   # reduced CPU mode (what the tests run)
    python scripts/benchmark.py --data-dir 3DShapeNets.zip --category chair   # plus the data path

`--recipe chapter` times the chapter's iteration: generate B volumes, update D on B real and B generated volumes, update
G on B fresh latents. `--recipe stable` times the default recipe (one D update on both batches, R1 every 4th
iteration, G average), in whole 4-iteration cycles. `benchmarks/torch_baseline.py` runs the same two recipes on the
same networks in plain PyTorch, so the samples/s of the two compare directly when both run on the same machine;
`--baseline FILE` reads its JSON lines (written just before, on the same machine) and adds to each row its samples/s
over the baseline's best for the same recipe (`vs_baseline`). Prints one JSON line per measurement.

    python benchmarks/torch_baseline.py --precision bfloat16 > baseline.jsonl
    KERAS_BACKEND=jax python scripts/benchmark.py --precision bfloat16 --baseline baseline.jsonl
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

# forward FLOPs (2 × multiply-adds) per sample at 64³, layer by layer: (output positions, in channels, out channels)
# for 4³ kernels, so TFLOP/s figures compare with other implementations of the chapter's networks.
_GENERATOR_LAYERS = [(1, 200, 512), (4**3, 512, 256), (8**3, 256, 128), (16**3, 128, 64), (32**3, 64, 1)]
_DISCRIMINATOR_LAYERS = [(32**3, 1, 64), (16**3, 64, 128), (8**3, 128, 256), (4**3, 256, 512), (1, 512, 1)]
FORWARD_GENERATOR = sum(2 * n * c_in * c_out * 64 for n, c_in, c_out in _GENERATOR_LAYERS)
FORWARD_DISCRIMINATOR = sum(2 * n * c_in * c_out * 64 for n, c_in, c_out in _DISCRIMINATOR_LAYERS)


def flops_per_iteration(batch):
    """G forward; D forward+backward on real and on generated; G forward+backward through D (backward ≈ 2× forward)."""
    return batch * (FORWARD_GENERATOR + 3 * FORWARD_DISCRIMINATOR * 2 + 3 * FORWARD_GENERATOR + 3 * FORWARD_DISCRIMINATOR)


def peak_device_gib():
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**30
        if backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
    except Exception:  # memory statistics are a nicety: a backend without them reports 0
        pass
    return 0.0


def block(value):
    """Waits for the device to finish computing `value` (a metrics dict)."""
    import keras

    return keras.ops.convert_to_numpy(value["g_loss"])


# `--recipe`: the chapter's iteration (the `book` preset) or the default recipe (`r1-ema`: logistic loss, R1 every
# 4th iteration, G average).
RECIPE_PRESETS = {"chapter": "book", "stable": "r1-ema"}


def time_iterations(
    precision, batch, iterations, warmup, data_format="auto", deconvolution="auto", seed=0, discriminator_convolution="auto",
    recipe="chapter",
):
    """Times the training step; with R1 every N-th iteration, whole cycles of N, so the penalty's share is counted."""
    import keras
    import numpy as np

    from threedgan.config import Config
    from threedgan.latent import sample_latents
    from threedgan.models import resolve_data_format, resolve_deconvolution, resolve_discriminator_convolution
    from threedgan.models import accelerator_present, configure_precision
    from threedgan.train import Gan
    from threedgan.training_step import to_device

    config = Config.from_preset(
        RECIPE_PRESETS[recipe],
        batch_size=batch,
        mixed_precision=precision,
        data_format=data_format,
        deconvolution=deconvolution,
        discriminator_convolution=discriminator_convolution,
        seed=seed,
    )
    compute_dtype = configure_precision(config)
    gan = Gan.build(config)
    rng = np.random.default_rng(seed)
    # Random occupancy at 10 %, as the reference uses; bit-packed on the device like the training loop's data.
    volumes = keras.ops.convert_to_tensor(np.packbits(rng.random((batch * 4, 32**3)) > 0.9, axis=1))
    latents = lambda: sample_latents(batch, config.z_size, config.z_stddev, seed=rng)

    def iteration():
        indices = to_device(rng.integers(0, batch * 4, batch))  # as the training loop feeds its batches
        return gan.step(keras.ops.take(volumes, indices, axis=0), latents(), latents())

    cycle = config.r1_interval if config.r1_gamma > 0 else 1
    start = time.perf_counter()
    for _ in range(cycle):  # compiles every variant of the step
        block(iteration())
    compile_seconds = time.perf_counter() - start
    for _ in range(warmup * cycle):
        block(iteration())
    times = []
    for _ in range(max(1, iterations // cycle)):
        start = time.perf_counter()
        for _ in range(cycle):
            metrics = iteration()
        block(metrics)
        times.append((time.perf_counter() - start) / cycle)
    median = statistics.median(times)
    return dict(
        impl="threedgan",
        recipe=recipe,
        backend=keras.backend.backend(),
        precision=compute_dtype,
        data_format=resolve_data_format(config),
        deconvolution=resolve_deconvolution(config),
        discriminator_convolution=resolve_discriminator_convolution(config),
        batch=batch,
        median_s=round(median, 4),
        samples_per_s=round(batch / median, 1),
        tflops=round(flops_per_iteration(batch) / median / 1e12, 2),
        first_iteration_s=round(compile_seconds, 2),
        peak_gib=round(peak_device_gib(), 2),
        accelerator=accelerator_present(),
        device=device_name(),
    )


# Recipe names as baselines spell them: benchmarks/torch_baseline.py uses ours; other yardsticks call the default
# recipe `r1`.
BASELINE_RECIPES = {"chapter": "chapter", "stable": "stable", "r1": "stable"}


def baseline_rates(path):
    """The highest `samples_per_s` per recipe in a file of JSON lines (other lines are skipped). Samples per second,
    not seconds per iteration, so a baseline run at another batch size still compares.

    Raises:
        ConfigError: the file holds no line with a known `recipe` and a positive `samples_per_s`.
        OSError: the file cannot be read.
    """
    from threedgan.errors import ConfigError

    best = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            recipe, rate = BASELINE_RECIPES.get(row.get("recipe")), row.get("samples_per_s")
            if recipe and isinstance(rate, (int, float)) and rate > 0:
                best[recipe] = max(best.get(recipe, rate), rate)
    if not best:
        raise ConfigError(
            f"--baseline {path}: no JSON line with a recipe ({', '.join(BASELINE_RECIPES)}) and a samples_per_s"
        )
    return best


def device_name():
    import keras

    try:
        if keras.backend.backend() == "jax":
            import jax

            return jax.devices()[0].device_kind
        if keras.backend.backend() == "torch":
            import torch

            return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:
        pass
    return "cpu"


def time_data_path(data_dir, category, rotations, batch, batches):
    """Cold and cached load of a category, resident size, and how many batches/s the input pipeline can feed."""
    import keras
    import numpy as np

    from threedgan.config import Config
    from threedgan.data import load_dataset
    from threedgan.latent import sample_latents

    config = Config()
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        dataset = load_dataset(data_dir, [category], rotations=rotations, cache_dir=cache_dir)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_dataset(data_dir, [category], rotations=rotations, cache_dir=cache_dir)
        cached = time.perf_counter() - start
    device_volumes = keras.ops.convert_to_tensor(dataset.packed)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(batches):
        indices = rng.choice(len(dataset), batch, replace=False)  # the cost of drawing a batch, as the trainer does
        real = keras.ops.take(device_volumes, keras.ops.convert_to_tensor(indices), axis=0)
        sample_latents(batch, config.z_size, config.z_stddev, seed=rng), sample_latents(batch, config.z_size, config.z_stddev, seed=rng)
    keras.ops.convert_to_numpy(real)
    feed = time.perf_counter() - start
    return dict(
        impl="threedgan-data",
        category=category,
        rotations=rotations,
        volumes=len(dataset),
        cold_load_s=round(cold, 2),
        cached_load_s=round(cached, 3),
        packed_mib=round(dataset.packed.nbytes / 2**20, 1),
        bytes_per_volume=dataset.packed.nbytes // max(1, len(dataset)),
        max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        feed_batches_per_s=round(batches / feed, 1),
    )


def main(argv=None):
    from threedgan.cli import user_errors_to_exit_code

    return user_errors_to_exit_code(_main)(argv)


def _main(argv):
    from threedgan.config import DATA_FORMAT_CHOICES, DECONVOLUTION_CHOICES, DISCRIMINATOR_CONVOLUTION_CHOICES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="reduced CPU mode: batch 2, 2 iterations, float32")
    parser.add_argument("--precision", nargs="+", default=None, choices=["bfloat16", "float32"])
    parser.add_argument("--data-format", nargs="+", default=["auto"], choices=DATA_FORMAT_CHOICES)
    parser.add_argument("--deconvolution", nargs="+", default=["auto"], choices=DECONVOLUTION_CHOICES)
    parser.add_argument("--discriminator-convolution", nargs="+", default=["auto"], choices=DISCRIMINATOR_CONVOLUTION_CHOICES)
    parser.add_argument("--recipe", nargs="+", default=None, choices=list(RECIPE_PRESETS),
                        help="chapter: the book's iteration; stable: the default r1-ema recipe (R1 share counted); "
                        "default both (--cpu: stable)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-dir", help="also time the data path on this archive or folder")
    parser.add_argument("--category", default="chair")
    parser.add_argument("--rotations", default="all", choices=["all", "canonical"])
    parser.add_argument("--skip-step", action="store_true", help="only time the data path")
    parser.add_argument("--json", help="append the JSON lines to this file too")
    parser.add_argument("--baseline", metavar="FILE",
                        help="JSON lines of benchmarks/torch_baseline.py from this machine: adds vs_baseline to each row")
    arguments = parser.parse_args(argv)
    baseline = baseline_rates(arguments.baseline) if arguments.baseline else {}
    if arguments.cpu:
        arguments.batch, arguments.iters, arguments.warmup = 2, 2, 0
        arguments.precision = arguments.precision or ["float32"]
        arguments.recipe = arguments.recipe or ["stable"]
    arguments.recipe = arguments.recipe or list(RECIPE_PRESETS)
    results = []
    if not arguments.skip_step:
        for recipe, precision in ((r, p) for r in arguments.recipe for p in arguments.precision or ["bfloat16", "float32"]):
            for data_format in arguments.data_format:
                for deconvolution in arguments.deconvolution:
                    for discriminator_convolution in arguments.discriminator_convolution:
                        results.append(
                            time_iterations(
                                precision,
                                arguments.batch,
                                arguments.iters,
                                arguments.warmup,
                                data_format,
                                deconvolution,
                                discriminator_convolution=discriminator_convolution,
                                recipe=recipe,
                            )
                        )
                        if recipe in baseline:
                            results[-1]["vs_baseline"] = round(results[-1]["samples_per_s"] / baseline[recipe], 2)
                        print(json.dumps(results[-1]), flush=True)
    if arguments.data_dir:
        batches = 20 if arguments.cpu else 200
        results.append(time_data_path(arguments.data_dir, arguments.category, arguments.rotations, arguments.batch, batches))
        print(json.dumps(results[-1]), flush=True)
    if arguments.json:
        with open(arguments.json, "a") as handle:
            for result in results:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
