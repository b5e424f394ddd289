"""Stand-ins for the chapter's networks with the same inputs, outputs and kinds of state, cheap on a CPU.

The chapter's Conv3D layers take seconds per step on a CPU (TensorFlow's 3D filter gradients are slow there), which
tests of the training loop's bookkeeping do not need. These have BatchNorm in both networks (non-trainable state that
checkpoints must keep), the chapter's shapes ((batch, z) → 64³ → a probability) and explicit layer names. The
subprocess tests (`test_kill_resume.py`) and `scripts/kill_soak.py` run the chapter's networks.
"""
import keras
from keras import layers



def fast_models(z_size=200):
    """Returns `(generator, discriminator)`: z (z_size) → (64, 64, 64, 1) → (1,)."""
    latent = keras.Input((z_size,), name="z")
    x = layers.Dense(64, name="fast_generator_dense")(latent)
    x = layers.BatchNormalization(name="fast_generator_batchnorm")(x)
    x = layers.ReLU(name="fast_generator_relu")(x)
    x = layers.Reshape((4, 4, 4, 1), name="fast_generator_reshape")(x)
    x = layers.UpSampling3D(16, name="fast_generator_upsample")(x)
    x = layers.Activation("sigmoid", dtype="float32", name="fast_generator_sigmoid")(x)
    generator = keras.Model(latent, x, name="generator")
    volume = keras.Input((64, 64, 64, 1), name="volume")
    y = layers.AveragePooling3D(8, name="fast_discriminator_pool")(volume)
    y = layers.Flatten(name="fast_discriminator_flatten")(y)
    y = layers.Dense(4, name="fast_discriminator_dense")(y)
    y = layers.BatchNormalization(name="fast_discriminator_batchnorm")(y)
    y = layers.LeakyReLU(0.2, name="fast_discriminator_leaky_relu")(y)
    y = layers.Dense(1, name="fast_discriminator_score")(y)
    # The same final layer as the chapter's discriminator: training takes D's logits from just before it.
    y = layers.Activation("sigmoid", dtype="float32", name="discriminator_sigmoid")(y)
    return generator, keras.Model(volume, y, name="discriminator")


def fast_builders():
    """Replacements for `threedgan.models.build_generator` / `build_discriminator` that build `fast_models()`.

    `Gan.build` calls the generator builder first; it builds the pair and the discriminator builder returns its half.
    Patch them into `threedgan.train` (e.g. with pytest's `monkeypatch.setattr`).
    """
    pair = {}

    def build_generator(config):
        pair["models"] = fast_models(config.z_size)
        return pair["models"][0]

    def build_discriminator(config):
        return pair["models"][1]

    return build_generator, build_discriminator
