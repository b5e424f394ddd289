from setuptools import find_packages, setup

setup(
    name="threedgan",
    version="0.1.0",
    description="3D-GAN (Wu et al., NIPS 2016) in Keras 3, after chapter 2 of Generative Adversarial Networks Projects",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["threedgan", "threedgan.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.5",
        "numpy>=1.26",
        "scipy>=1.10",
        "h5py>=3.10",
        "matplotlib>=3.8",
        "pillow>=10",
        "tensorboard>=2.16",
        "scikit-image>=0.22",
        "trimesh>=4.0",
        "scikit-learn>=1.3",
        "hyperopt>=0.2.7",
    ],
    # The backend is an extra: `.[tensorflow]` (the default backend; requirements.txt installs it), `.[jax]` (CPU; on
    # NVIDIA GPUs install "jax[cuda12]" instead), or an existing torch. `.[test]` is what the tests need, as
    # requirements-test.txt.
    extras_require={
        "tensorflow": ["tensorflow>=2.16"],
        "jax": ["jax>=0.4.30"],
        "test": ["tensorflow>=2.16", "pytest>=8", "tf_keras>=2.16", "jax[cpu]>=0.4.30", "torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "threedgan-train=threedgan.cli:train_main",
            "threedgan-generate=threedgan.cli:generate_main",
            "threedgan-evaluate=threedgan.evaluate:evaluate_main",
            "threedgan-tune=threedgan.tune:tune_main",
        ]
    },
)
