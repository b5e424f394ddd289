#!/usr/bin/env python3
"""Times each convolution of the chapter's networks alone, forward and forward + backward, on a GPU.

    KERAS_BACKEND=jax python scripts/layer_probe.py jax       # XLA: Keras' ops, the sub-pixel deconvolutions and
                                                              # the space-to-depth convolutions
    python scripts/layer_probe.py torch                       # cuDNN through plain PyTorch, for comparison
    KERAS_BACKEND=jax python scripts/layer_probe.py jax --layers D1   # D's first layer only: plain vs space-to-depth

The diagnostic behind README "Speed": it showed XLA's 3-D transposed convolutions (the generator's layers 2–5)
2–19× slower than cuDNN's forward + backward, worst for the last layer, while plain convolutions ran alike. Batch 32,
bf16, median of 20 timed runs after 3 warm-ups; one JSON line per layer and variant. The discriminator's stride-2
layers (D1–D4) are also timed as `SpaceToDepthConv3D` computes them (`--discriminator-convolution`; the networks use it
for all four on JAX), on JAX through the layer itself and on PyTorch as the same rearrangement in plain PyTorch. Needs
JAX or PyTorch with a GPU to mean anything.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

# (input side, in channels, out channels, stride, padding) of every convolution, at 64³
DISCRIMINATOR = [(64, 1, 64, 2, "same"), (32, 64, 128, 2, "same"), (16, 128, 256, 2, "same"), (8, 256, 512, 2, "same"), (4, 512, 1, 1, "valid")]
GENERATOR = [(1, 200, 512, 1, "valid"), (4, 512, 256, 2, "same"), (8, 256, 128, 2, "same"), (16, 128, 64, 2, "same"), (32, 64, 1, 2, "same")]


def median_ms(function, wait, repeats, warmup):
    for _ in range(warmup):
        wait(function())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        wait(function())
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def space_to_depth_torch(x, kernel):
    """`SpaceToDepthConv3D`'s computation in plain PyTorch (NCDHW, kernel (out, in, 4, 4, 4), even sides)."""
    import torch.nn.functional as F

    b, c, d, h, w = x.shape
    f = kernel.shape[0]
    x = F.pad(x, (1, 1, 1, 1, 1, 1))  # `same` for kernel 4, stride 2, even sides: one before, one after
    x = x.reshape(b, c, d // 2 + 1, 2, h // 2 + 1, 2, w // 2 + 1, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
    x = x.reshape(b, 8 * c, d // 2 + 1, h // 2 + 1, w // 2 + 1)
    # tap k = 2t + p: (f, c, t_d, p_d, t_h, p_h, t_w, p_w) → (f, p_d, p_h, p_w, c, t_d, t_h, t_w)
    kernel = kernel.reshape(f, c, 2, 2, 2, 2, 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(f, 8 * c, 2, 2, 2)
    return F.conv3d(x, kernel)


def probe_jax(batch, timing, layers, discriminator_convolutions):
    import jax
    import jax.numpy as jnp
    import keras
    from keras import ops

    from threedgan.models import SpaceToDepthConv3D, SubpixelConv3DTranspose

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    key = jax.random.PRNGKey(0)
    for network, table in (("D", DISCRIMINATOR), ("G", GENERATOR)):
        for index, (side, c_in, c_out, stride, padding) in enumerate(table, start=1):
            if layers and f"{network}{index}" not in layers:
                continue
            x = jax.random.normal(key, (batch, side, side, side, c_in), jnp.bfloat16)
            variants = []
            if network == "D":
                kernel = jax.random.normal(key, (4, 4, 4, c_in, c_out), jnp.bfloat16) * 0.02
                if stride != 2 or "plain" in discriminator_convolutions:
                    variants.append(("conv", lambda k, x: ops.conv(x, k, strides=stride, padding=padding)))
                if stride == 2 and "space_to_depth" in discriminator_convolutions:
                    rearranged = SpaceToDepthConv3D(c_out, 4, strides=2, padding="same", use_bias=False)
                    rearranged.build(x.shape)
                    variants.append(("space_to_depth", lambda k, x: rearranged.stateless_call([k.astype("float32")], [], x)[0]))
            else:
                kernel = jax.random.normal(key, (4, 4, 4, c_out, c_in), jnp.bfloat16) * 0.02
                variants.append(("transposed", lambda k, x: ops.conv_transpose(x, k, strides=stride, padding=padding)))
                if stride == 2:
                    layer = SubpixelConv3DTranspose(c_out, 4, strides=2, padding="same", use_bias=False)
                    layer.build(x.shape)
                    variants.append(("subpixel", lambda k, x: layer.stateless_call([k.astype("float32")], [], x)[0]))
            for name, function in variants:
                forward = jax.jit(function)
                gradient = jax.jit(jax.grad(lambda k, x: jnp.sum(function(k, x).astype(jnp.float32) ** 2), argnums=(0, 1)))
                yield dict(framework="jax", layer=f"{network}{index}", variant=name, forward_ms=median_ms(lambda: forward(kernel, x), jax.block_until_ready, **timing),
                           forward_backward_ms=median_ms(lambda: gradient(kernel, x), jax.block_until_ready, **timing))


def probe_torch(batch, timing, layers, discriminator_convolutions):
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True
    wait = lambda _: torch.cuda.synchronize()
    for network, table in (("D", DISCRIMINATOR), ("G", GENERATOR)):
        for index, (side, c_in, c_out, stride, padding) in enumerate(table, start=1):
            if layers and f"{network}{index}" not in layers:
                continue
            options = dict(device="cuda", dtype=torch.bfloat16)
            x = torch.randn(batch, c_in, side, side, side, **options).to(memory_format=torch.channels_last_3d).requires_grad_()
            pad = 1 if padding == "same" else 0
            variants = []
            if network == "D":
                kernel = torch.randn(c_out, c_in, 4, 4, 4, **options) * 0.02
                if stride != 2 or "plain" in discriminator_convolutions:
                    variants.append(("cudnn channels_last_3d", lambda: F.conv3d(x, kernel, stride=stride, padding=pad)))
                if stride == 2 and "space_to_depth" in discriminator_convolutions:
                    variants.append(("space_to_depth channels_last_3d", lambda: space_to_depth_torch(x, kernel)))
            else:
                kernel = torch.randn(c_in, c_out, 4, 4, 4, **options) * 0.02
                variants.append(("cudnn channels_last_3d", lambda: F.conv_transpose3d(x, kernel, stride=stride, padding=pad)))
            kernel = kernel.to(memory_format=torch.channels_last_3d).requires_grad_()

            for name, function in variants:

                def forward_backward():
                    (function().float() ** 2).sum().backward()

                with torch.no_grad():
                    forward = median_ms(function, wait, **timing)
                yield dict(framework="torch", layer=f"{network}{index}", variant=name, forward_ms=forward,
                           forward_backward_ms=median_ms(forward_backward, wait, **timing))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=["jax", "torch"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median taken)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layers", nargs="+", metavar="NAME", help="only these layers, e.g. D1 G5 (default all)")
    parser.add_argument(
        "--discriminator-convolution",
        nargs="+",
        default=["plain", "space_to_depth"],
        choices=["plain", "space_to_depth"],
        help="which ways to time D's stride-2 layers D1-D4 (default both)",
    )
    arguments = parser.parse_args(argv)
    timing = dict(repeats=arguments.repeats, warmup=arguments.warmup)
    probe = probe_jax if arguments.framework == "jax" else probe_torch
    for row in probe(arguments.batch, timing, arguments.layers, arguments.discriminator_convolution):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
