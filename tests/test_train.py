"""The trainer (train/): the phase selector, the frozen side, non-finite steps,
the perceptual network, data parallelism on 8 simulated devices (the
SIGKILLed run that resumes: test_train_resume.py).

The micro config (train_fixtures.py) keeps every network of the paper's
pipeline but at sizes that compile in seconds; the dataset has the format of
`face3d data generate` with random content (the learning itself is measured
by `face3d train --config tiny`, see the README).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import micro_config, write_dataset

from face3d_train.data import Batches, to_global
from face3d_train.loop import Trainer, load_model, make_mesh


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def trainer(dataset):
    config = micro_config(dataset)
    config.selector = "switch"
    return Trainer(config, load_model(config), make_mesh(jax.devices()[:1]))


def _batches(trainer, dataset, n):
    it = Batches(dataset, trainer.config, seed=0)
    return [next(it) for _ in range(n)]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _run(trainer, host_state, batch, step):
    # The step donates its state: give it fresh buffers (a typed PRNG key comes
    # back from device_get as the same device array).
    state = jax.tree.map(lambda x: x.copy(), jax.device_put(host_state, trainer.replicated))
    state = state.replace(step=jnp.int32(step))
    return trainer.compiled(state, batch)(state, batch, trainer.frozen)


def test_schedule(trainer):
    phases = [int(trainer.setup.phase_of(s)) for s in range(10)]
    # 2 pre-training steps, then 2 shape and 2 albedo steps, repeated.
    assert phases == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2]


def test_each_phase_updates_one_side_and_leaves_the_other_bit_identical(trainer, dataset):
    batch = to_global(_batches(trainer, dataset, 1)[0], trainer.data_sharding)
    host = jax.device_get(trainer.init_state())
    for step, phase, trained, frozen in ((0, 0, "albedo", "shape"), (2, 1, "shape", "albedo"),
                                         (4, 2, "albedo", "shape")):
        new, metrics = _run(trainer, host, batch, step)
        assert int(metrics["phase"]) == phase and float(metrics["finite"]) == 1.0
        assert _same(getattr(new, frozen), getattr(host, frozen)), (step, frozen)
        assert _same(new.buffers, host.buffers)
        assert not _same(getattr(new, trained), getattr(host, trained)), (step, trained)
        assert int(new.step) == step + 1
    # The GAN phases count their own steps (the lazy regularisers' clock).
    assert int(new.albedo.gan_step) == 1


def test_a_non_finite_step_is_skipped(trainer, dataset):
    host_batch = _batches(trainer, dataset, 1)[0]
    host_batch["crop"][0, 0, 0, 0] = np.nan
    batch = to_global(host_batch, trainer.data_sharding)
    host = jax.device_get(trainer.init_state())
    new, metrics = _run(trainer, host, batch, 2)  # a shape step
    assert float(metrics["finite"]) == 0.0
    assert _same(new.shape, host.shape) and _same(new.albedo, host.albedo)
    assert int(new.bad_steps) == 1 and int(new.step) == 3


def test_the_perceptual_term_is_vgg16_relu33_when_its_weights_are_given(tmp_path, trainer,
                                                                       dataset):
    """Sec. 4.1's VGG16 relu3_3, from a torchvision-layout state dict, against
    the torch twin of test_vgg.py; without weights the term stays on F's maps."""
    torch = pytest.importorskip("torch")
    from test_vgg import TorchVGGFeatures, _relu33_reference

    from face3d_train import terms as T
    from face3d_train.state import make_setup
    from face3d_train.step import Nets, context

    assert set(trainer.setup.frozen) == {"identity"}
    torch.manual_seed(0)
    twin = TorchVGGFeatures().eval()
    torch.save(twin.state_dict(), tmp_path / "vgg16.pth")
    config = micro_config(dataset)
    config.model.perceptual.weights = str(tmp_path / "vgg16.pth")
    setup = make_setup(config, trainer.model, jax.random.key(0))
    assert set(setup.frozen) == {"identity", "perceptual"}
    batch = {k: jnp.asarray(v) for k, v in _batches(trainer, dataset, 1)[0].items()}

    @jax.jit
    def term_and_render(state, frozen):
        ctx = context(setup, Nets(setup, state, frozen), batch, jax.random.key(1),
                      noise_mode="const")
        return T.TERMS["perceptual"](ctx), ctx.render.image

    value, image = term_and_render(setup.init_state(jax.random.key(2)), setup.frozen)
    # The render already lies over the crop (its background), as the term assumes.
    fr = _relu33_reference(twin, np.asarray(image))
    ft = _relu33_reference(twin, np.asarray(batch["crop"]))
    np.testing.assert_allclose(float(value), np.mean(np.square(fr - ft)), rtol=1e-4)

    config.model.perceptual.weights = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        make_setup(config, trainer.model, jax.random.key(0))


@pytest.mark.multidevice
def test_one_and_eight_devices_reach_the_same_parameters(trainer, dataset):
    """The 1-device run uses the module's switch step; the 8-device run the
    same config with the selector on the host, so the two selectors are
    compared too."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    config = micro_config(dataset)
    config.selector = "phase"
    eight = Trainer(config, trainer.model, make_mesh(jax.devices()[:8]))
    results = []
    for t in (trainer, eight):
        state = t.init_state()
        for step, host in enumerate(_batches(t, dataset, 6)):  # every phase twice
            state, _ = t.step(state, to_global(host, t.data_sharding), step)
        results.append(jax.device_get(state))
    one, eight = results
    for a, b in zip(_leaves(one.shape.params) + _leaves(one.albedo.g) + _leaves(one.albedo.d),
                    _leaves(eight.shape.params) + _leaves(eight.albedo.g)
                    + _leaves(eight.albedo.d), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    assert int(one.step) == int(eight.step) == 6


def test_the_gan_phase_runs_the_twin_tested_d_update_and_ema(trainer, dataset):
    """The trainer's GAN phase (step.py) updates D_real as gan_updates.d_update,
    the function tested against rosinality's train.py (test_gan_step.py), on A_GT
    and G_Ab(w) with the trainer's keys, lazy R1 included (gan_step 0), and G_Ab's
    EMA as gan_updates.ema_update of the G it trained; with the paper's GAN
    hyper-parameters read from the config. A trainer that computed its own D
    update, R1 weight or EMA would fail here."""
    from flax import nnx

    from face3d_train import gan_updates
    from face3d_train.state import gan_config
    from face3d_train.step import make_step

    setup = trainer.setup
    assert setup.gan == gan_config(trainer.config.optim.gan)
    assert (setup.gan.r1_gamma, setup.gan.pl_weight, setup.gan.pl_decay) == (10.0, 2.0, 0.01)
    batch = {k: jnp.asarray(v) for k, v in _batches(trainer, dataset, 1)[0].items()}
    state = setup.init_state(jax.random.key(4))
    new, metrics = jax.jit(make_step(setup, phase=0))(state, batch, setup.frozen)
    assert float(metrics["finite"]) == 1.0 and float(metrics["gan/r1"]) > 0
    # The trainer's keys: the step's key -> (next, sub); sub -> (fakes, G, path length).
    k_fake = jax.random.split(jax.random.split(state.key)[1], 3)[0]
    side, buffers = state.albedo, state.buffers

    @jax.jit
    def expected(side, new_g):
        gen = nnx.merge(setup.graphs["albedo"], side.g, buffers["albedo"])
        fake = gen.synthesis(batch["w"][:, :gen.config.n_latent], noise_mode="random",
                             key=k_fake)
        d, d_opt, _ = gan_updates.d_update(
            setup.gan, setup.d_tx,
            lambda p: nnx.merge(setup.graphs["discriminator"], p, buffers["discriminator"]),
            side.d, side.d_opt, batch["albedo"] * 2.0 - 1.0, fake, side.gan_step)
        beta = gan_updates.ema_beta(setup.gan, batch["w"].shape[0], side.gan_step)
        return d, d_opt, gan_updates.ema_update(side.g_ema, new_g, beta)

    d, d_opt, g_ema = expected(side, new.albedo.g)
    # The same functions on the same inputs, compiled in two programs: XLA may
    # fuse them differently, so float32 rounding of a few ulps of each leaf's
    # largest entry, per operation, over two Adam steps (main and R1).
    for ours, ref in ((new.albedo.d, d), (new.albedo.d_opt, d_opt), (new.albedo.g_ema, g_ema)):
        for a, b in zip(_leaves(ours), _leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(1.0, np.abs(b).max()))
    assert not _same(new.albedo.d, side.d)
