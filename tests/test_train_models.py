"""The trainer's networks (train/models.py): G_Ab's modulation start and its
residual over a base."""

from __future__ import annotations

import jax
import pytest
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


def test_residual_g_ab_starts_at_its_base_and_learns_a_residual():
    """`model.albedo.residual_over_mean`: G_Ab's toRGB weights start at 0, so a
    fresh G_Ab draws exactly the base `Setup.init_state` sets (the training
    set's mean A_GT in a run) for every w, and a gradient reaches its toRGB
    weights, so the residual can grow."""
    import jax.numpy as jnp

    from face3d_train.loop import load_model
    from face3d_train.state import make_setup

    config = micro_config()
    config.model.albedo.residual_over_mean = True
    setup = make_setup(config, load_model(config), jax.random.key(0))
    res = int(config.model.albedo.resolution)
    base = np.asarray(jax.random.uniform(jax.random.key(1), (res, res, 3)))
    state = setup.init_state(jax.random.key(2), albedo_base=base)
    w = jax.random.normal(jax.random.key(3), (2, 18, 512))

    def draw(g_params):
        gen = nnx.merge(setup.graphs["albedo"], g_params, state.buffers["albedo"])
        return albedo_map(gen, w, noise_mode="const")

    out = np.asarray(draw(state.albedo.g))
    # base * 2 - 1 then (x + 1) / 2: float32 round-off of values in [0, 1].
    np.testing.assert_allclose(out, np.broadcast_to(base, out.shape), atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(jnp.square(draw(p) - 0.5)))(state.albedo.g)
    to_rgb = [np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)
              if "to_rgb" in jax.tree_util.keystr(p) and "conv" in jax.tree_util.keystr(p)
              and "weight" in jax.tree_util.keystr(p) and "modulation" not in
              jax.tree_util.keystr(p)]
    assert to_rgb and max(np.abs(g).max() for g in to_rgb) > 0.0

    # Without the option there is no base to set.
    config.model.albedo.residual_over_mean = False
    plain = make_setup(config, load_model(config), jax.random.key(0))
    with pytest.raises(ValueError, match="residual_over_mean"):
        plain.init_state(jax.random.key(2), albedo_base=base)
