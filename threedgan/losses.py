"""Losses: pure `keras.ops` functions of D's logits (float32), the same on every backend.

- `binary_crossentropy`: the chapter's loss, mean cross-entropy against a constant label.
- `logistic_discriminator` / `logistic_generator`: the non-saturating logistic loss (Goodfellow et al. 2014, the
  form StyleGAN2 trains with): D minimises softplus(-D(x)) + softplus(D(G(z))), G minimises softplus(-D(G(z))).
- `r1_penalty`: Mescheder et al. 2018's R1 regulariser, γ/2 · E‖∇ₓ D(x)‖² over real volumes, from the input gradients
  that the training step takes.

Every loss takes logits rather than D's sigmoid output: the sigmoid saturates in float32 (and in bfloat16 much
sooner), so cross-entropy computed from it has a vanishing gradient exactly when D is sure, the state the chapter's
recipe drifts into.
"""

from __future__ import annotations

import keras
from keras import ops


def _float32(logits):
    return ops.cast(ops.reshape(logits, (-1,)), "float32")


def binary_crossentropy(target: float, logits):
    """The chapter's loss: mean binary cross-entropy of `sigmoid(logits)` against the constant label `target`.

    Args:
        target: the label, 1 for real (or below 1 for one-sided label smoothing), 0 for generated.
        logits: D's scores before the sigmoid, any shape with the batch first.

    Returns:
        A float32 scalar.
    """
    logits = _float32(logits)
    # `ones_like * target`, not `full_like`: on PyTorch, Keras turns the fill value into a GPU tensor by a host copy
    # that waits for the GPU; a Python number in PyTorch's own arithmetic does not.
    return ops.mean(keras.losses.binary_crossentropy(ops.ones_like(logits) * target, logits, from_logits=True))


def logistic_discriminator(real_logits, fake_logits):
    """D's non-saturating logistic loss: mean softplus(−D(x)) over real volumes plus mean softplus(D(G(z))).

    Args:
        real_logits, fake_logits: D's scores before the sigmoid on real and on generated volumes.

    Returns:
        `(loss_real, loss_fake)`, float32 scalars; D minimises their sum.
    """
    return ops.mean(ops.softplus(-_float32(real_logits))), ops.mean(ops.softplus(_float32(fake_logits)))


def logistic_generator(fake_logits):
    """G's non-saturating loss: mean softplus(−D(G(z))), i.e. cross-entropy against the label "real".

    Args:
        fake_logits: D's scores before the sigmoid on generated volumes.

    Returns:
        A float32 scalar.
    """
    return ops.mean(ops.softplus(-_float32(fake_logits)))


def r1_penalty(input_gradients, gamma: float):
    """R1: γ/2 times the batch mean of the squared norm of D's gradient with respect to each real volume.

    Args:
        input_gradients: ∂(Σ D(x))/∂x for a batch of real volumes x (batch first). With BatchNorm's batch statistics
            in D this includes each volume's effect on the others' scores through the batch's mean and variance, as
            in the reference implementations that train such discriminators with R1.
        gamma: the penalty's weight γ.

    Returns:
        A float32 scalar.
    """
    gradients = ops.cast(input_gradients, "float32")
    squared_norms = ops.sum(ops.reshape(ops.square(gradients), (ops.shape(gradients)[0], -1)), axis=1)
    return 0.5 * gamma * ops.mean(squared_norms)


def accuracy(real: bool, logits):
    """Fraction of D's scores on the right side of 0.5 (logit 0): above for real volumes, at or below for generated."""
    logits = _float32(logits)
    correct = logits > 0 if real else logits <= 0
    return ops.mean(ops.cast(correct, "float32"))
