"""The trainer's networks (train/models.py): G_Ab's modulation start."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from train_fixtures import micro_config

from face3d_jax.nets.stylegan2 import Generator, StyleGAN2Config
from face3d_train.models import albedo_map, scale_modulation


def _albedo_pair(scale: float) -> tuple[np.ndarray, np.ndarray]:
    cfg = micro_config().model.albedo
    gen = Generator(StyleGAN2Config(resolution=int(cfg.resolution), style_dim=512,
                                    n_mlp=int(cfg.n_mlp), channel_max=int(cfg.channel_max),
                                    out_channels=3), rngs=nnx.Rngs(0))
    scale_modulation(gen, scale)
    w = jax.random.normal(jax.random.key(1), (2, 18, 512))
    out = np.asarray(albedo_map(gen, w, noise_mode="const"))
    return out[0], out[1]


def test_modulation_init_zero_starts_g_ab_independent_of_w():
    # Every style is then the modulation's bias (1) whatever w: one albedo for
    # every latent, to float32 round-off of identical computations.
    a, b = _albedo_pair(0.0)
    np.testing.assert_array_equal(a, b)
    # StyleGAN2's own start answers w.
    a, b = _albedo_pair(1.0)
    assert np.max(np.abs(a - b)) > 1e-3
