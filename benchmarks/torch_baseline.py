#!/usr/bin/env python3
"""Plain-PyTorch baseline of threedgan's training iteration: the same networks and recipes, no Keras.

    python benchmarks/torch_baseline.py                                   # GPU: both recipes, bf16 and fp32
    python benchmarks/torch_baseline.py --recipe chapter --precision bfloat16 --memory-format channels_last_3d
    python benchmarks/torch_baseline.py --cpu                             # tiny CPU smoke run (what the tests run)

It times what `scripts/benchmark.py` times, so the two scripts' samples/s compare directly when run on the same
machine, one after the other:

- the networks of `threedgan/models.py` (the chapter's table): G 200 → 512 → 256 → 128 → 64 → 1 (transposed
  convolutions, kernel 4, the first stride 1 `valid`, then stride 2), D 1 → 64 → 128 → 256 → 512 → 1 (convolutions,
  kernel 4, stride 2, the last stride 1 `valid`), BatchNorm after every layer but the last of each network, ReLU in
  G, LeakyReLU(0.2) in D, sigmoid outputs (the losses take D's logits);
- `--recipe chapter`: the chapter's iteration: a D update on B real volumes (binary cross-entropy, label 1), a D
  update on B generated volumes (label 0), a G update on B fresh latents (label 1); Adam, G lr 0.0025 β1 0.5, D lr
  1e-5 β1 0.9 (the `book` preset);
- `--recipe stable`: the default recipe (`r1-ema` preset): one D update on the non-saturating logistic loss of a real
  and a generated batch, the R1 penalty (γ = 10) on the real batch every 4th iteration, folded into that update ×4
  (lazy regularisation), a G update on the non-saturating loss, and an exponential moving average of G's weights
  (decay 0.999); Adam lr 2e-4, β (0.5, 0.99) for both networks. Timed in whole cycles of 4 iterations, so the
  penalty's share is counted.

Real volumes are held on the device as 0/1 32³ grids (10 % occupied at random) and zoomed ×2 to 64³ each iteration,
as threedgan's loop expands its packed data; latents are drawn on the device from N(0, 0.33²). Each training-mode
forward pass updates BatchNorm's running statistics, as plain PyTorch does (threedgan discards them in the passes
that are not an update of that network; the cost is the same). Prints one JSON line per measurement.
"""
import argparse
import json
import statistics
import sys
import time

GENERATOR_CHANNELS = (200, 512, 256, 128, 64, 1)
DISCRIMINATOR_CHANNELS = (1, 64, 128, 256, 512, 1)
KERNEL_SIZE = 4
LEAKY_RELU_SLOPE = 0.2
Z_SIZE = 200
Z_STDDEV = 0.33
# The two recipes' optimiser settings: (G lr, G betas, D lr, D betas), as the `book` and `r1-ema` presets.
RECIPES = {
    "chapter": dict(generator=(0.0025, (0.5, 0.999)), discriminator=(1e-5, (0.9, 0.999))),
    "stable": dict(generator=(2e-4, (0.5, 0.99)), discriminator=(2e-4, (0.5, 0.99))),
}
R1_GAMMA = 10.0
R1_INTERVAL = 4
EMA_DECAY = 0.999
# Forward FLOPs (2 × multiply-adds) per sample at 64³, layer by layer: (output positions, in channels, out channels)
# for 4³ kernels, the table `scripts/benchmark.py` uses, so TFLOP/s figures compare.
_GENERATOR_LAYERS = [(1, 200, 512), (4**3, 512, 256), (8**3, 256, 128), (16**3, 128, 64), (32**3, 64, 1)]
_DISCRIMINATOR_LAYERS = [(32**3, 1, 64), (16**3, 64, 128), (8**3, 128, 256), (4**3, 256, 512), (1, 512, 1)]
FORWARD_GENERATOR = sum(2 * n * c_in * c_out * 64 for n, c_in, c_out in _GENERATOR_LAYERS)
FORWARD_DISCRIMINATOR = sum(2 * n * c_in * c_out * 64 for n, c_in, c_out in _DISCRIMINATOR_LAYERS)


class UsageError(Exception):
    """A bad command line or an unusable device: printed as one `error: ...` line, exit status 2."""


def chapter_flops_per_iteration(batch):
    """G forward; D forward+backward on real and on generated; G forward+backward through D (backward ≈ 2× forward)."""
    return batch * (FORWARD_GENERATOR + 3 * FORWARD_DISCRIMINATOR * 2 + 3 * FORWARD_GENERATOR + 3 * FORWARD_DISCRIMINATOR)


def build_networks(torch):
    """The chapter's generator and discriminator as `torch.nn.Sequential` models (NCDHW).

    Args:
        torch: the imported `torch` module (imported by the caller, so `--help` works without PyTorch).

    Returns:
        `(generator, discriminator)`: G maps (B, 200) latents to (B, 1, 64, 64, 64) logits; D maps (B, 1, 64, 64, 64)
        volumes to (B,) logits. Sigmoids are left to the losses (from logits) and to `generator_volumes`.
    """
    nn = torch.nn
    generator_layers = [nn.Unflatten(1, (Z_SIZE, 1, 1, 1))]
    last = len(GENERATOR_CHANNELS) - 2
    for index, (c_in, c_out) in enumerate(zip(GENERATOR_CHANNELS, GENERATOR_CHANNELS[1:])):
        first = index == 0
        generator_layers.append(
            nn.ConvTranspose3d(c_in, c_out, KERNEL_SIZE, stride=1 if first else 2, padding=0 if first else 1)
        )
        if index < last:
            generator_layers += [nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
    discriminator_layers = []
    last = len(DISCRIMINATOR_CHANNELS) - 2
    for index, (c_in, c_out) in enumerate(zip(DISCRIMINATOR_CHANNELS, DISCRIMINATOR_CHANNELS[1:])):
        if index < last:
            discriminator_layers += [
                nn.Conv3d(c_in, c_out, KERNEL_SIZE, stride=2, padding=1),
                nn.BatchNorm3d(c_out),
                nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
            ]
        else:
            discriminator_layers += [nn.Conv3d(c_in, c_out, KERNEL_SIZE, stride=1, padding=0), nn.Flatten(0)]
    return nn.Sequential(*generator_layers), nn.Sequential(*discriminator_layers)


def parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())


class Trainer:
    """One recipe's training iteration on one device, in plain PyTorch (eager, as a PyTorch user writes it)."""

    def __init__(self, torch, recipe, batch, device, precision, memory_format, seed=0):
        self.torch, self.recipe, self.batch, self.device = torch, recipe, batch, device
        torch.manual_seed(seed)
        generator, discriminator = build_networks(torch)
        self.memory_format = torch.channels_last_3d if memory_format == "channels_last_3d" else torch.contiguous_format
        self.generator = generator.to(device, memory_format=self.memory_format).train()
        self.discriminator = discriminator.to(device, memory_format=self.memory_format).train()
        settings = RECIPES[recipe]
        self.generator_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=settings["generator"][0], betas=settings["generator"][1]
        )
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=settings["discriminator"][0], betas=settings["discriminator"][1]
        )
        self.average = [parameter.detach().clone() for parameter in self.generator.parameters()]
        self.autocast_dtype = torch.bfloat16 if precision == "bfloat16" else None
        self.iteration = 0
        generator_seed = torch.Generator(device="cpu").manual_seed(seed)
        # A pool of 4 batches of real volumes, 10 % occupied, kept at 32³ on the device.
        self.pool = (torch.rand((4 * batch, 1, 32, 32, 32), generator=generator_seed) < 0.1).to(device, torch.uint8)

    def _autocast(self):
        if self.autocast_dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _real_batch(self):
        torch = self.torch
        indices = torch.randint(0, len(self.pool), (self.batch,), device=self.device)
        volumes = self.pool[indices].float()
        for axis in (2, 3, 4):  # zoom ×2 by repetition, as the data loader does
            volumes = volumes.repeat_interleave(2, dim=axis)
        return volumes.contiguous(memory_format=self.memory_format)

    def _latents(self):
        return self.torch.randn((self.batch, Z_SIZE), device=self.device) * Z_STDDEV

    def _generate(self, latents):
        return self.torch.sigmoid(self.generator(latents).float())

    def step(self):
        """Runs one training iteration; returns G's loss (a tensor, so the caller decides when to synchronise)."""
        torch = self.torch
        functional = torch.nn.functional
        real = self._real_batch()
        with torch.no_grad(), self._autocast():
            fake = self._generate(self._latents()).contiguous(memory_format=self.memory_format)
        if self.recipe == "chapter":
            for volumes, label in ((real, 1.0), (fake, 0.0)):
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    logits = self.discriminator(volumes).float()
                loss = functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))
                loss.backward()
                self.discriminator_optimizer.step()
        else:
            regularize = self.iteration % R1_INTERVAL == 0
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            if regularize:
                real.requires_grad_(True)
            with self._autocast():
                real_logits = self.discriminator(real).float()
                fake_logits = self.discriminator(fake).float()
            loss = functional.softplus(-real_logits).mean() + functional.softplus(fake_logits).mean()
            if regularize:
                (gradients,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                penalty = 0.5 * R1_GAMMA * gradients.float().square().flatten(1).sum(1).mean()
                loss = loss + R1_INTERVAL * penalty
            loss.backward()
            self.discriminator_optimizer.step()
        # G update through D. D's weights are frozen for it, so backward skips their gradients (only G's are
        # needed), as threedgan's step differentiates with respect to G's weights alone.
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)
        with self._autocast():
            logits = self.discriminator(self._generate(self._latents()).contiguous(memory_format=self.memory_format))
        generator_loss = functional.softplus(-logits.float()).mean()
        generator_loss.backward()
        self.discriminator.requires_grad_(True)
        self.generator_optimizer.step()
        if self.recipe == "stable":
            with torch.no_grad():
                for average, parameter in zip(self.average, self.generator.parameters()):
                    average.lerp_(parameter, 1.0 - EMA_DECAY)
        self.iteration += 1
        return generator_loss.detach()


def synchronize(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_recipe(torch, recipe, batch, iterations, warmup, device, precision, memory_format, seed=0):
    """Times one configuration: the first iteration(s) alone, `warmup` untimed ones, then `iterations` timed ones.

    With R1 every 4th iteration (`stable`), every unit is a whole cycle of 4 iterations, so the penalty's cost is
    averaged in; the result is per iteration either way.

    Returns:
        A dict, printed as one JSON line.
    """
    trainer = Trainer(torch, recipe, batch, device, precision, memory_format, seed)
    cycle = R1_INTERVAL if recipe == "stable" else 1

    def unit():
        start = time.perf_counter()
        for _ in range(cycle):
            loss = trainer.step()
        synchronize(torch, device)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite G loss in the {recipe} recipe")
        return (time.perf_counter() - start) / cycle

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = unit()
    for _ in range(warmup):
        unit()
    times = [unit() for _ in range(iterations)]
    median = statistics.median(times)
    result = dict(
        impl="torch-baseline",
        recipe=recipe,
        precision=precision,
        memory_format=memory_format,
        batch=batch,
        median_s=round(median, 4),
        samples_per_s=round(batch / median, 1),
        tflops=round(chapter_flops_per_iteration(batch) / median / 1e12, 2) if recipe == "chapter" else None,
        first_iteration_s=round(first, 2),
        iterations=iterations * cycle,
        warmup=warmup * cycle,
        peak_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        # Trainable parameters: Keras' `count_params()` adds BatchNorm's moving statistics (2 a channel: 1,920 a
        # network), which PyTorch keeps as buffers.
        generator_trainable_parameters=parameter_count(trainer.generator),
        discriminator_trainable_parameters=parameter_count(trainer.discriminator),
    )
    return result


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


class _ArgumentParser(argparse.ArgumentParser):
    # One `error: ...` line and exit status 2, like threedgan's own command lines, instead of usage + message.
    def error(self, message):
        raise UsageError(message)


def build_parser():
    """The command line's parser."""
    parser = _ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", nargs="+", choices=sorted(RECIPES), default=["chapter", "stable"])
    parser.add_argument(
        "--precision", nargs="+", choices=["bfloat16", "float32"], help="default bfloat16 and float32 (CPU: float32)"
    )
    parser.add_argument(
        "--memory-format",
        nargs="+",
        choices=["contiguous", "channels_last_3d"],
        help="tensor layout; default both on a GPU (channels_last_3d is PyTorch's fastest with bf16), contiguous on CPU",
    )
    parser.add_argument("--batch", type=_positive_int, default=32, help="batch size (default 32)")
    parser.add_argument("--iters", type=_positive_int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed iterations after the first (default 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    parser.add_argument("--cpu", action="store_true", help="smoke mode: CPU, batch 1, 1 timed iteration, no warm-up, float32")
    parser.add_argument(
        "--no-cudnn-benchmark", action="store_true", help="leave cuDNN's algorithm search off (it is on by default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also append the JSON lines to this file")
    return parser


def main(argv=None):
    """Runs every requested (recipe, precision, memory format) combination; returns the exit status."""
    try:
        arguments = build_parser().parse_args(argv)
        try:
            import torch
        except ImportError:
            raise UsageError("PyTorch is not installed: pip install torch") from None
        if arguments.cpu:
            arguments.device, arguments.batch, arguments.iters, arguments.warmup = "cpu", 1, 1, 0
        device_name = ("cuda" if torch.cuda.is_available() else "cpu") if arguments.device == "auto" else arguments.device
        try:
            device = torch.device(device_name)
        except RuntimeError as error:
            raise UsageError(f"--device {arguments.device!r}: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {arguments.device}: no CUDA device is available")
        on_gpu = device.type == "cuda"
        precisions = arguments.precision or (["bfloat16", "float32"] if on_gpu else ["float32"])
        memory_formats = arguments.memory_format or (["channels_last_3d", "contiguous"] if on_gpu else ["contiguous"])
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # --help
        return exit_request.code if isinstance(exit_request.code, int) else 0

    torch.backends.cudnn.benchmark = not arguments.no_cudnn_benchmark
    results = []
    for recipe in arguments.recipe:
        for precision in precisions:
            for memory_format in memory_formats:
                result = time_recipe(
                    torch, recipe, arguments.batch, arguments.iters, arguments.warmup, device, precision, memory_format,
                    arguments.seed,
                )  # fmt: skip
                results.append(result)
                print(json.dumps(result), flush=True)
    if arguments.json:
        with open(arguments.json, "a", encoding="utf-8") as handle:
            for result in results:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
