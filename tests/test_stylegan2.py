"""StyleGAN2 networks: config F parameter counts (rosinality: G 30,370,060, D
29,012,513), the blur against the PyTorch twin's upfirdn2d, the two modulated
conv paths against each other, noise modes, truncation, style mixing, bfloat16
and the interface the GAN trainer relies on. Image/logit equality with the
PyTorch twin is in test_convert_stylegan2.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from face3d_jax.nets.stylegan2 import (
    Discriminator, Generator, LatentAvg, NoiseBuffer, StyleGAN2Config, count_params,
)
from face3d_jax.nets.stylegan2_layers import fir_taps, upfirdn2d

TINY = StyleGAN2Config(resolution=8, style_dim=16, n_mlp=2, channel_max=8)


def _key(seed):
    """A PRNG key of the "rbg" kind: threefry's sampler takes seconds to compile per
    shape on a loaded 2-core CPU; the code under test is the same for every kind."""
    return jax.random.key(seed, impl="rbg")


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _filled(cls, cfg, seed):
    """cls(cfg) holding N(0, 1) values in every variable (non-zero noise strengths and
    biases), built without tracing the random initialisers (slow to compile on CPU)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(state))
    # Mapping weights are stored N(0, 1) / lr_mlp (equalised lr), as at initialisation.
    values = {k: jnp.asarray(rng.standard_normal(v.shape)
                             / (cfg.lr_mlp if k[0] == "style" and k[-1] == "weight" else 1),
                             jnp.float32) for k, v in flat.items()}
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(values))
    return nnx.merge(graphdef, state)


def _as_config(module, cfg):
    """The same variables in a module of another (compatible) config."""
    abstract = nnx.eval_shape(lambda: type(module)(cfg, rngs=nnx.Rngs(0)))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(module))


@pytest.fixture(scope="module")
def gen():
    return _filled(Generator, TINY, 0)


def test_config_f_counts_without_allocating():
    cfg = StyleGAN2Config(resolution=1024)
    assert cfg.n_latent == 18 and TINY.n_latent == 4
    g = nnx.eval_shape(lambda: Generator(cfg, rngs=nnx.Rngs(0)))
    d = nnx.eval_shape(lambda: Discriminator(cfg, rngs=nnx.Rngs(0)))
    assert count_params(g) == 30_370_060
    assert count_params(d) == 29_012_513
    assert count_params(nnx.state(g)) == 30_370_060  # buffers are not Params
    assert isinstance(g.latent_avg, LatentAvg) and not isinstance(g.latent_avg, nnx.Param)
    assert g.latent_avg.shape == (512,)
    assert all(isinstance(n, NoiseBuffer) and not isinstance(n, nnx.Param) for n in g.noises)
    assert [n.shape[1] for n in g.noises] == [4] + [2 ** (i // 2 + 3) for i in range(16)]


@pytest.mark.parametrize("resolution", [4, 1000, 2048])
def test_config_rejects_bad_resolutions(resolution):
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(resolution=resolution)


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, -1))])
def test_upfirdn2d_matches_twin(up, down, pad):
    torch = pytest.importorskip("torch")
    from face3d_eval.torch_reference.stylegan2 import make_kernel, upfirdn2d as ref_upfirdn

    x = np.random.default_rng(0).standard_normal((2, 6, 7, 3)).astype(np.float32)
    taps = (1, 3, 3, 1)
    gain = up * up
    ours = upfirdn2d(jnp.asarray(x), fir_taps(taps, gain=gain), up=up, down=down, pad=pad)
    ref = ref_upfirdn(torch.from_numpy(x).permute(0, 3, 1, 2), make_kernel(taps) * gain,
                      up=up, down=down, pad=pad)
    np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_initialisation_follows_rosinality():
    g = Generator(TINY, rngs=nnx.Rngs(_key(0)))
    assert float(jnp.abs(g.conv1.noise.weight[...]).max()) == 0  # noise strength 0
    np.testing.assert_array_equal(np.asarray(g.convs[0].conv.modulation.bias[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(g.latent_avg[...]), 0.0)
    # Equalised lr: N(0, 1) storage, the mapping's divided by lr_mlp = 0.01.
    assert 0.5 < float(g.convs[1].conv.weight[...].std()) < 1.5
    assert 50 < float(g.style[0].weight[...].std()) < 150
    assert float(g.style[0].bias[...].max()) == 0


def test_fused_and_unfused_modconv_agree(gen):
    fused = _as_config(gen, StyleGAN2Config(**{**TINY.__dict__, "fused_modconv": True}))
    w = _normal(1, (3, TINY.n_latent, TINY.style_dim))
    a, b = jax.jit(lambda w: (gen.synthesis(w, noise_mode="const"),
                              fused.synthesis(w, noise_mode="const")))(w)
    assert a.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * float(jnp.abs(a).max()))


def test_noise_modes(gen):
    w = _normal(2, (2, TINY.style_dim))
    rand = jax.jit(lambda w, key: gen.synthesis(w, noise_mode="random", key=key))
    k1, k2 = _key(3), _key(4)
    a, b, c = rand(w, k1), rand(w, k1), rand(w, k2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-3
    const, none = jax.jit(lambda w: (gen.synthesis(w, noise_mode="const"),
                                     gen.synthesis(w, noise_mode="none")))(w)
    assert float(jnp.abs(const - none).max()) > 1e-3
    assert float(jnp.abs(const - a).max()) > 1e-3
    with pytest.raises(ValueError, match="needs a PRNG key"):
        gen.synthesis(w, noise_mode="random")
    with pytest.raises(ValueError, match="noise_mode"):
        gen.synthesis(w, noise_mode="fixed")
    with pytest.raises(ValueError, match="w\\+"):
        gen.synthesis(jnp.zeros((2, 3, TINY.style_dim)), noise_mode="none")


def test_truncation_and_mixing(gen):
    z = _normal(5, (2, TINY.style_dim))

    @jax.jit
    def run(z):
        avg = gen.latent_avg[...]
        kmix, kmean = _key(7), _key(6)
        return dict(
            mean=gen.mean_latent(64, kmean),
            mean_manual=gen.mapping(jax.random.normal(kmean, (64, TINY.style_dim))).mean(0),
            # psi = 0: every sample is the image of the mean latent, mixed or not.
            zero=gen(z, truncation=0.0, noise_mode="const", mixing_key=kmix, mixing_prob=1.0),
            centre=gen.synthesis(jnp.broadcast_to(avg, z.shape), noise_mode="const"),
            plain=gen(z, noise_mode="const"),
            manual=gen.synthesis(gen.mapping(z), noise_mode="const"),
            half=gen(z, truncation=0.5, noise_mode="const"),
            half_manual=gen.synthesis(avg + 0.5 * (gen.mapping(z) - avg), noise_mode="const"),
            mixed=gen(z, noise_mode="const", mixing_key=kmix, mixing_prob=1.0),
            unlikely=gen(z, noise_mode="const", mixing_key=kmix, mixing_prob=1e-9))

    out = {k: np.asarray(v) for k, v in run(z).items()}
    assert out["mean"].shape == (TINY.style_dim,)
    np.testing.assert_allclose(out["mean"], out["mean_manual"], atol=1e-5)
    np.testing.assert_allclose(out["zero"], out["centre"], atol=1e-5)
    np.testing.assert_allclose(out["plain"], out["manual"], atol=1e-5)
    np.testing.assert_allclose(out["half"], out["half_manual"], atol=1e-5)
    assert np.abs(out["mixed"] - out["plain"]).max() > 1e-3
    np.testing.assert_allclose(out["unlikely"], out["plain"], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params(gen):
    cfg = StyleGAN2Config(**{**TINY.__dict__, "dtype": jnp.bfloat16})
    g16 = _as_config(gen, cfg)
    d16 = _filled(Discriminator, cfg, 2)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(g16, nnx.Param)))
    w = _normal(9, (4, TINY.style_dim))
    a, b, logits = jax.jit(lambda w: (gen.synthesis(w, noise_mode="const"),
                                      g16.synthesis(w, noise_mode="const"),
                                      d16(g16.synthesis(w, noise_mode="const"))))(w)
    assert b.dtype == jnp.float32 and logits.dtype == jnp.float32
    err = float(jnp.abs(a - b).max() / jnp.abs(a).max())
    assert 0 < err < 0.1


def test_discriminator_interface_and_gradients():
    d = _filled(Discriminator, TINY, 3)
    img = _normal(10, (4, 8, 8, 3))
    graphdef, params, rest = nnx.split(d, nnx.Param, ...)

    def loss(params, img):
        return jax.nn.softplus(nnx.merge(graphdef, params, rest)(img)).mean()

    @jax.jit
    def run(params, img):
        value, grads = jax.value_and_grad(loss)(params, img)
        model = nnx.merge(graphdef, params, rest)
        return value, grads, model(img), model(img.at[0].multiply(3.0))

    value, grads, logits, other = run(params, img)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(x))) and bool(jnp.any(x != 0)) for x in leaves)
    assert logits.shape == (4, 1) and logits.dtype == jnp.float32
    # Minibatch stddev couples the samples of a group: changing one changes the others.
    assert float(jnp.abs(other[1:] - logits[1:]).max()) > 0
    with pytest.raises(ValueError, match="multiple of the minibatch"):
        d(jnp.zeros((6, 8, 8, 3)))
    with pytest.raises(ValueError, match="expects images"):
        d(jnp.zeros((4, 16, 16, 3)))
