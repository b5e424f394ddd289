"""threedgan: the 3D-GAN of Wu et al. (NIPS 2016) in Keras 3, after chapter 2 of *Generative Adversarial Networks Projects*."""

import os as _os

__version__ = "0.1.0"

# XLA lays 3-D convolutions out as NCDHW on GPUs by default; NDHWC trains the chapter's networks 1.2–1.8× faster on
# an H100 with the JAX backend (README "Speed"). XLA reads XLA_FLAGS when JAX starts its first backend, so the flag
# is added on import, before any model exists. A user's own choice wins: any `--xla_gpu_force_conv_…` already in
# XLA_FLAGS (e.g. `--xla_gpu_force_conv_nhwc=false`) leaves the variable alone. Non-GPU platforms ignore it.
MEASURED_XLA_FLAGS = ("--xla_gpu_force_conv_nhwc",)


def _add_measured_xla_flags() -> None:
    flags = _os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_force_conv_" not in flags:
        _os.environ["XLA_FLAGS"] = " ".join(filter(None, [flags, *MEASURED_XLA_FLAGS]))


_add_measured_xla_flags()
