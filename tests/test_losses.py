"""Each loss against its closed form, and the generator average's arithmetic."""
import keras
import numpy as np

from threedgan import losses


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


LOGITS = np.array([[-30.0], [-2.0], [0.0], [0.5], [3.0], [40.0]], "float32")


def test_binary_crossentropy_is_the_chapters_loss_without_saturation():
    # −t·log σ(x) − (1−t)·log(1−σ(x)) = t·softplus(−x) + (1−t)·softplus(x), finite where σ(x) rounds to 0 or 1.
    x = LOGITS[:, 0].astype(np.float64)
    for target in (1.0, 0.9, 0.0):
        expected = np.mean(target * softplus(-x) + (1 - target) * softplus(x))
        np.testing.assert_allclose(numpy(losses.binary_crossentropy(target, LOGITS)), expected, rtol=1e-5)


def test_logistic_losses():
    real, fake = LOGITS, LOGITS[::-1] * 0.5
    loss_real, loss_fake = losses.logistic_discriminator(real, fake)
    np.testing.assert_allclose(numpy(loss_real), np.mean(softplus(-real)), rtol=1e-6)
    np.testing.assert_allclose(numpy(loss_fake), np.mean(softplus(fake)), rtol=1e-6)
    np.testing.assert_allclose(numpy(losses.logistic_generator(fake)), np.mean(softplus(-fake)), rtol=1e-6)
    # With label 1 and 0 the chapter's cross-entropy is the same loss: the two recipes differ in their updates.
    np.testing.assert_allclose(numpy(losses.binary_crossentropy(1.0, real)), numpy(loss_real), rtol=1e-6)


def test_r1_penalty_is_half_gamma_mean_squared_norm():
    gradients = np.random.default_rng(0).normal(size=(3, 4, 4, 4, 1)).astype("float32")
    expected = 0.5 * 10.0 * np.mean(np.sum(gradients.reshape(3, -1) ** 2, axis=1))
    np.testing.assert_allclose(numpy(losses.r1_penalty(gradients, 10.0)), expected, rtol=1e-6)


def test_accuracy_counts_each_side_of_logit_zero():
    assert numpy(losses.accuracy(True, LOGITS)) == 3 / 6
    assert numpy(losses.accuracy(False, LOGITS)) == 3 / 6  # 0 counts as "generated"
