"""The one backend-specific place: how one GAN iteration takes gradients and updates the networks.

Keras 3 has no backend-neutral way to take gradients, and the book's way (toggle `discriminator.trainable`, compile a
stacked model, `train_on_batch`) silently updates D during the generator step on every backend. So each update here
names the variables it changes:

- D update: gradients of D's loss with respect to D's trainable variables only; D's BatchNorm statistics move; the
  generated batch comes from `generator.stateless_call`, whose new BatchNorm statistics are thrown away.
- G update: gradients with respect to G's trainable variables only; D runs through `stateless_call`, so D's weights
  and BatchNorm statistics stay bit-exact.

Both networks run BatchNorm with batch statistics (`training=True`), as the chapter's `BatchNormalization()(x,
training=True)` intends.

One iteration, as in the chapter and `shared/bench/torch_reference.py`: a D update on B real volumes (label 1), a D
update on B generated volumes (label 0), a G update on B fresh latents (label 1). With the paper's rule
(`discriminator_accuracy_threshold`), both D updates are skipped when D's accuracy on the previous iteration's
batches was above the threshold.

JAX: one jitted pure function per iteration (state in, state out); the variables are written back only when
`sync_variables()` is called. TensorFlow: a `tf.function` around `GradientTape`. PyTorch: `torch.autograd.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import keras
from keras import ops

from threedgan.data import unpack_and_upsample
from threedgan.models import discriminator_logits


def binary_crossentropy(target: float, logits):
    """The chapter's mean binary cross-entropy against a constant label, from D's logits in float32.

    Same value as cross-entropy on the sigmoid's output, but its gradient never vanishes through clipping
    (see `threedgan.models.discriminator_logits`).
    """
    logits = ops.cast(logits, "float32")
    targets = ops.full_like(logits, target)
    return ops.mean(keras.losses.binary_crossentropy(targets, logits, from_logits=True))


def accuracy(real: bool, logits):
    """Fraction of D's scores on the right side of 0.5 (logit 0): above for real volumes, at or below for generated."""
    logits = ops.cast(logits, "float32")
    correct = logits > 0 if real else logits <= 0
    return ops.mean(ops.cast(correct, "float32"))


def _metrics(loss_real, loss_fake, loss_generator, scores_real, scores_fake, updated):
    real_accuracy = accuracy(True, scores_real)
    fake_accuracy = accuracy(False, scores_fake)
    return {
        "d_loss": 0.5 * (loss_real + loss_fake),
        "g_loss": loss_generator,
        "d_loss_real": loss_real,
        "d_loss_fake": loss_fake,
        "d_accuracy_real": real_accuracy,
        "d_accuracy_fake": fake_accuracy,
        "d_accuracy": 0.5 * (real_accuracy + fake_accuracy),
        "d_updated": ops.cast(updated, "float32"),
    }


def make_train_step(
    generator,
    discriminator,
    generator_optimizer,
    discriminator_optimizer,
    accuracy_threshold=None,
    train_generator=True,
    train_discriminator=True,
    real_label=1.0,
):
    """Returns the training step for the active Keras backend.

    Args:
        generator, discriminator: models from `threedgan.models`.
        generator_optimizer, discriminator_optimizer: Keras optimizers; built here on their network's trainable
            variables.
        accuracy_threshold: the paper's D-update rule, or `None` to update D every iteration.
        real_label: D's target for real volumes (1.0 in the chapter; 0.9 is one-sided label smoothing).
        train_generator, train_discriminator: `False` leaves that network's update out of the iteration (its
            losses are still computed), e.g. to warm up one network alone.

    Returns:
        An object with `__call__(real_packed, latents_fake, latents_generator) -> dict of scalar tensors` (see
        `_metrics`), `sync_variables()` (write the state back into the Keras variables; call it before reading the
        models), `reload_variables()` (the reverse, after loading weights) and a settable `last_accuracy` (D's
        accuracy on the previous iteration, which the paper's rule reads; checkpoints keep it).

    Raises:
        NotImplementedError: an unsupported Keras backend.
    """
    generator_optimizer.build(generator.trainable_variables)
    discriminator_optimizer.build(discriminator.trainable_variables)
    backend = keras.backend.backend()
    options = StepOptions(accuracy_threshold, train_generator, train_discriminator, real_label)
    arguments = (generator, discriminator, generator_optimizer, discriminator_optimizer, options)
    if backend == "jax":
        return _JaxStep(*arguments)
    if backend in ("tensorflow", "torch"):
        return _StatefulStep(*arguments)
    raise NotImplementedError(f"threedgan trains on the jax, tensorflow and torch backends, not {backend!r}")


@dataclass(frozen=True)
class StepOptions:
    """What an iteration updates and how; see `make_train_step`'s arguments of the same names."""

    accuracy_threshold: Optional[float] = None
    train_generator: bool = True
    train_discriminator: bool = True
    real_label: float = 1.0


class _JaxStep:
    """A jitted pure iteration; the Keras variables are only a mirror, refreshed by `sync_variables()`."""

    def __init__(self, generator, discriminator, generator_optimizer, discriminator_optimizer, options: StepOptions):
        import jax

        accuracy_threshold, real_label = options.accuracy_threshold, options.real_label
        train_generator, train_discriminator = options.train_generator, options.train_discriminator

        self.models = (generator, discriminator)
        self.optimizers = (generator_optimizer, discriminator_optimizer)
        self.state = self._read_variables()
        self._accuracy = jax.numpy.zeros((), "float32")
        critic = discriminator_logits(discriminator)
        threshold = 2.0 if accuracy_threshold is None else float(accuracy_threshold)

        def discriminator_loss(d_trainable, d_non_trainable, volumes, target):
            scores, d_non_trainable = critic.stateless_call(d_trainable, d_non_trainable, volumes, training=True)
            return binary_crossentropy(target, scores), (d_non_trainable, scores)

        def generator_loss(g_trainable, g_non_trainable, d_trainable, d_non_trainable, latents):
            volumes, g_non_trainable = generator.stateless_call(g_trainable, g_non_trainable, latents, training=True)
            scores, _ = critic.stateless_call(d_trainable, d_non_trainable, volumes, training=True)
            return binary_crossentropy(1.0, scores), g_non_trainable

        discriminator_grad = jax.value_and_grad(discriminator_loss, has_aux=True)
        generator_grad = jax.value_and_grad(generator_loss, has_aux=True)

        def step(state, last_accuracy, real_packed, latents_fake, latents_generator):
            g_trainable, g_non_trainable, g_optimizer_vars, d_trainable, d_non_trainable, d_optimizer_vars = state
            update = jax.numpy.logical_and(train_discriminator, last_accuracy <= threshold)
            fake, _ = generator.stateless_call(g_trainable, g_non_trainable, latents_fake, training=True)
            fake = jax.lax.stop_gradient(fake)
            losses, scores = [], []
            for volumes, target in ((unpack_and_upsample(real_packed), real_label), (fake, 0.0)):
                (loss, (new_non_trainable, batch_scores)), grads = discriminator_grad(
                    d_trainable, d_non_trainable, volumes, target
                )
                new_trainable, new_optimizer_vars = discriminator_optimizer.stateless_apply(
                    d_optimizer_vars, grads, d_trainable
                )
                # The paper's rule skips the update entirely: weights, BatchNorm statistics and Adam's moments.
                keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jax.numpy.where(update, a, b), new, old)
                d_trainable = keep(new_trainable, d_trainable)
                d_non_trainable = keep(new_non_trainable, d_non_trainable)
                d_optimizer_vars = keep(new_optimizer_vars, d_optimizer_vars)
                losses.append(loss)
                scores.append(batch_scores)
            (g_loss, g_non_trainable), grads = generator_grad(
                g_trainable, g_non_trainable, d_trainable, d_non_trainable, latents_generator
            )
            if train_generator:
                g_trainable, g_optimizer_vars = generator_optimizer.stateless_apply(g_optimizer_vars, grads, g_trainable)
            else:
                g_non_trainable = state[1]
            metrics = _metrics(losses[0], losses[1], g_loss, scores[0], scores[1], update)
            state = (g_trainable, g_non_trainable, g_optimizer_vars, d_trainable, d_non_trainable, d_optimizer_vars)
            return state, metrics["d_accuracy"], metrics

        self._step = jax.jit(step)

    def _read_variables(self):
        generator, discriminator = self.models
        generator_optimizer, discriminator_optimizer = self.optimizers
        values = lambda variables: [v.value for v in variables]
        return (
            values(generator.trainable_variables),
            values(generator.non_trainable_variables),
            values(generator_optimizer.variables),
            values(discriminator.trainable_variables),
            values(discriminator.non_trainable_variables),
            values(discriminator_optimizer.variables),
        )

    @property
    def last_accuracy(self) -> float:
        return float(self._accuracy)

    @last_accuracy.setter
    def last_accuracy(self, value: float) -> None:
        import jax

        self._accuracy = jax.numpy.asarray(value, "float32")

    def __call__(self, real_packed, latents_fake, latents_generator):
        self.state, self._accuracy, metrics = self._step(self.state, self._accuracy, real_packed, latents_fake, latents_generator)
        return metrics

    def sync_variables(self):
        generator, discriminator = self.models
        generator_optimizer, discriminator_optimizer = self.optimizers
        groups = (
            generator.trainable_variables,
            generator.non_trainable_variables,
            generator_optimizer.variables,
            discriminator.trainable_variables,
            discriminator.non_trainable_variables,
            discriminator_optimizer.variables,
        )
        for variables, values in zip(groups, self.state):
            for variable, value in zip(variables, values):
                variable.assign(value)

    def reload_variables(self):
        """Takes the state from the Keras variables again (after loading weights or a checkpoint)."""
        self.state = self._read_variables()


def forward_without_side_effects(model, inputs):
    """`model(inputs, training=True)` with batch statistics, leaving the model's BatchNorm averages untouched.

    On JAX the forward pass is compiled once per model (and input shape): run eagerly, each of its operations is
    dispatched and compiled on its own, which made the training loop's periodic sample images cost seconds.
    """
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    if keras.backend.backend() == "jax":
        forward = model.__dict__.get("_threedgan_compiled_forward")
        if forward is None:
            import jax

            forward = jax.jit(lambda weights, statistics, x: model.stateless_call(weights, statistics, x, training=True)[0])
            object.__setattr__(model, "_threedgan_compiled_forward", forward)  # not a tracked Keras attribute
        return forward(trainable, non_trainable, inputs)
    outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
    return outputs


class _StatefulStep:
    """TensorFlow and PyTorch: gradients by tape or autograd, updates through `optimizer.apply` on named variables."""

    def __init__(self, generator, discriminator, generator_optimizer, discriminator_optimizer, options: StepOptions):
        self.real_label = options.real_label
        self.generator, self.discriminator = generator, discriminator
        self.critic = discriminator_logits(discriminator)
        self.train_generator, self.train_discriminator = options.train_generator, options.train_discriminator
        self.generator_optimizer, self.discriminator_optimizer = generator_optimizer, discriminator_optimizer
        self.threshold = options.accuracy_threshold
        self.last_accuracy = 0.0
        self._step = self._iteration
        # TensorFlow data parallel: a step built under `tf.distribute.MirroredStrategy.scope()` (see
        # `threedgan.distributed.setup_mirrored`) runs each iteration on every replica's slice of the global batch.
        self.strategy, self.replicas = None, 1
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
                self.strategy = tf.distribute.get_strategy()
                self.replicas = self.strategy.num_replicas_in_sync
            iteration = self._iteration if self.strategy is None else self._mirrored_iteration
            # `update_discriminator` is a Python bool: one trace for each value, no graph-level branching.
            self._step = tf.function(iteration, reduce_retracing=True)

    def _gradients(self, loss_function, variables):
        """Returns `(loss, aux, gradients)` of `loss_function() -> (loss, aux)` with respect to `variables`."""
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss, aux = loss_function()
                # Under MirroredStrategy `optimizer.apply` sums the replicas' gradients: scaling each replica's mean
                # by 1/replicas makes that sum the gradient of the mean over the global batch.
                scaled = loss if self.replicas == 1 else loss / self.replicas
            return loss, aux, tape.gradient(scaled, variables)
        import torch

        loss, aux = loss_function()
        return loss, aux, list(torch.autograd.grad(loss, [v.value for v in variables]))

    def _iteration(self, real_packed, latents_fake, latents_generator, update_discriminator):
        generator, discriminator, critic = self.generator, self.discriminator, self.critic
        fake = ops.stop_gradient(forward_without_side_effects(generator, latents_fake))
        losses, scores = [], []
        for volumes, target in ((unpack_and_upsample(real_packed), self.real_label), (fake, 0.0)):
            if update_discriminator:

                def discriminator_loss():
                    batch_scores = critic(volumes, training=True)
                    return binary_crossentropy(target, batch_scores), batch_scores

                loss, batch_scores, grads = self._gradients(discriminator_loss, discriminator.trainable_variables)
                self.discriminator_optimizer.apply(grads, discriminator.trainable_variables)
            else:
                batch_scores = forward_without_side_effects(critic, volumes)
                loss = binary_crossentropy(target, batch_scores)
            losses.append(loss)
            scores.append(batch_scores)

        def generator_loss():
            if self.train_generator:
                volumes = generator(latents_generator, training=True)
            else:
                volumes = forward_without_side_effects(generator, latents_generator)
            return binary_crossentropy(1.0, forward_without_side_effects(critic, volumes)), None

        if self.train_generator:
            g_loss, _, grads = self._gradients(generator_loss, generator.trainable_variables)
            self.generator_optimizer.apply(grads, generator.trainable_variables)
        else:
            g_loss, _ = generator_loss()
        return _metrics(losses[0], losses[1], g_loss, scores[0], scores[1], update_discriminator)

    def _mirrored_iteration(self, real_packed, latents_fake, latents_generator, update_discriminator):
        """`_iteration` on every replica of `self.strategy`, each on its `1 / replicas` slice of the global batch.

        The global tensors go to every replica, which takes its own rows; the metrics are the replicas' mean (equal
        slices, so the global batch's mean for the losses and accuracies).
        """
        import tensorflow as tf

        replicas = self.replicas

        def replica_slice(array):
            array = tf.convert_to_tensor(array)
            rows = array.shape[0] // replicas
            stacked = tf.reshape(array, [replicas, rows, *array.shape[1:]])
            return tf.gather(stacked, tf.distribute.get_replica_context().replica_id_in_sync_group)

        def replica_iteration(*batch):
            return self._iteration(*(replica_slice(array) for array in batch), update_discriminator)

        metrics = self.strategy.run(replica_iteration, args=(real_packed, latents_fake, latents_generator))
        return {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None) for name, value in metrics.items()}

    def __call__(self, real_packed, latents_fake, latents_generator):
        update = self.train_discriminator and (self.threshold is None or self.last_accuracy <= self.threshold)
        metrics = self._step(real_packed, latents_fake, latents_generator, update)
        if self.threshold is not None:
            self.last_accuracy = float(metrics["d_accuracy"])
        return {name: ops.stop_gradient(value) for name, value in metrics.items()}

    def sync_variables(self):
        """The variables are the state on these backends."""

    def reload_variables(self):
        """The variables are the state on these backends."""
