"""A quiet start-up: no CUDA / oneDNN chatter from TensorFlow and JAX unless `--debug`.

TensorFlow prints, on every start on a machine without an NVIDIA driver, `Could not find cuda drivers…`, `failed
call to cuInit … UNKNOWN ERROR (303)`, the oneDNN banner (twice: at import and when devices are created) and a CPU
instruction-set note. `TF_CPP_MIN_LOG_LEVEL` hides some of it, but TensorFlow ≥ 2.16 writes the lines logged before
absl's logging is initialised (the banner, the driver message) to stderr whatever the level, so `quiet_startup`:

1. sets `TF_CPP_MIN_LOG_LEVEL` to 2 (3 on a machine with no NVIDIA driver, where the only errors TensorFlow's C++
   logs at start are the failed CUDA probes), unless the user set it;
2. imports TensorFlow (if installed: the TensorBoard writer imports it on every backend) and creates its devices
   with the process's stderr (file descriptor 2) pointed at a temporary file, then writes back every line that is
   not one of the known start-up messages (`NOISE`), so nothing else is lost;
3. keeps JAX's "no CUDA jaxlib / backend 'cuda' failed" INFO lines out of the INFO log.

`TF_ENABLE_ONEDNN_OPTS` is left alone (set it to 0 yourself to turn oneDNN off): turning it off would silence the
banner but also change TensorFlow's CPU kernels, and the banner is filtered anyway.

Everything here must run before TensorFlow is imported, so this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile

# Start-up lines of TensorFlow / absl / XLA that say nothing about the user's run.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|cpu_feature_guard\.cc"
    r"|^To enable the following instructions:"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
)
_done = False


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (Linux), without importing any GPU library."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


@contextlib.contextmanager
def filtered_stderr(pattern=NOISE):
    """Sends what is written to file descriptor 2 inside the block to a temporary file, then writes back every line
    that `pattern` does not match. Python's `sys.stderr` is flushed first, so the order of its own lines holds."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not pattern.search(line)
            ]
            if kept:
                os.write(2, "".join(kept).encode("utf-8"))


def quiet_startup(debug: bool = False, import_backends: bool = True) -> None:
    """Silences TensorFlow's and JAX's start-up chatter (see the module's description); with `debug`, does nothing.

    Call it first in an entry point, before anything imports TensorFlow or Keras. Settings the user made win.
    `import_backends=False` only sets the variables (for `--help`, which should not wait for TensorFlow).
    """
    global _done
    if debug or _done:
        return
    _done = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if nvidia_driver_present() else "3")
    for name in ("jax._src.xla_bridge", "absl"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    if not import_backends or "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with filtered_stderr():
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # creates the devices, which logs the second round
        except Exception:  # noqa: BLE001 - a broken install shows itself later, with the user's command
            pass
