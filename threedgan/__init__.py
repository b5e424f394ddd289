"""threedgan: the 3D-GAN of Wu et al. (NIPS 2016) in Keras 3, after chapter 2 of *Generative Adversarial Networks Projects*."""

__version__ = "0.1.0"
