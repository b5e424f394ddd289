"""generate's pieces that need no trained model: latent references with one meaning each, samples.npz provenance."""
import numpy as np
import pytest

from threedgan.config import Config
from threedgan.errors import ConfigError
from threedgan.generate import latent_from, load_packed_samples, read_provenance, save_packed_samples
from threedgan.latent import sample_latents


def test_latent_references_have_one_meaning_each(tmp_path):
    config = Config()
    rows = sample_latents(8, config.z_size, config.z_stddev, seed=0)
    latents = tmp_path / "latents.npy"
    np.save(latents, rows)
    np.testing.assert_array_equal(latent_from("seed:3", config), sample_latents(1, config.z_size, config.z_stddev, seed=3)[0])
    np.testing.assert_array_equal(latent_from("sample:3", config, str(latents)), rows[3])
    np.testing.assert_array_equal(latent_from(f"{latents}:5", config), rows[5])
    np.testing.assert_array_equal(latent_from(str(latents), config), rows[0])
    assert not np.array_equal(latent_from("seed:3", config), rows[3]), "seed 3 is not sample_003 of seed 0"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3", "ambiguous: write seed:3 for the latent drawn with seed 3, or sample:3 for row 3 (sample_003)"),
        ("seed:x", "seed: takes an integer"),
        ("sample:9", "no latent vector 9 (the file holds 8: 0 to 7)"),
        ("chair", "write seed:N, sample:N, file.npy or file.npy:N"),
        ("missing.npy:1", "cannot read missing.npy"),
    ],
)
def test_bad_latent_references_say_how_to_write_them(tmp_path, spec, message):
    config = Config()
    latents = tmp_path / "latents.npy"
    np.save(latents, sample_latents(8, config.z_size, config.z_stddev, seed=0))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        latent_from(spec, config, str(latents))


def test_sample_reference_needs_its_latents_file(tmp_path):
    with pytest.raises(ConfigError, match="not found; pass --latents PATH"):
        latent_from("sample:1", Config(), str(tmp_path / "latents.npy"))


def test_provenance_round_trips_and_old_files_still_load(tmp_path):
    volumes = np.zeros((3, 8, 8, 8), dtype=np.float32)
    volumes[1, 2:5, 2:5, 2:5] = 0.9
    path = save_packed_samples(volumes, str(tmp_path / "samples.npz"), 0.5, {"categories": ["chair"], "seed": 7})
    facts = read_provenance(path)
    assert facts == {"categories": ["chair"], "seed": 7, "count": 3, "threshold": 0.5, "shape": [8, 8, 8]}
    np.testing.assert_array_equal(load_packed_samples(path), volumes > 0.5)
    # A file from before provenance was recorded: volumes as before, no facts.
    old = tmp_path / "old.npz"
    occupied = volumes > 0.5
    np.savez_compressed(old, packed=np.packbits(occupied.reshape(3, -1), axis=1), shape=np.array(occupied.shape))
    assert read_provenance(str(old)) == {}
    np.testing.assert_array_equal(load_packed_samples(str(old)), occupied)
