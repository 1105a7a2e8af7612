"""The trainer (train/): the phase selector, the frozen side, non-finite steps,
the perceptual network, data parallelism on 8 simulated devices (the
SIGKILLed run that resumes: test_train_resume.py).

The micro config (train_fixtures.py) keeps every network of the paper's
pipeline but at sizes that compile in seconds; the dataset has the format of
`face3d data generate` with random content (the learning itself is measured
by `face3d train --config tiny`, see the README).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_fixtures import micro_config, write_dataset

from face3d_train.data import Batches, to_global
from face3d_train.loop import Trainer, load_model, make_mesh
from face3d_train.state import PHASES


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


def test_rigid_from_landmarks_leaves_head_pose_and_camera_to_the_landmark_term(trainer,
                                                                             dataset):
    """With losses.rigid_from_landmarks the terms keep their values, the image
    terms' gradient on the head's global-pose and camera outputs is exactly 0
    and the landmark term's is not; without it the image terms reach them."""
    from face3d_train import terms as T
    from face3d_train.models import POSE_DIM
    from face3d_train.state import make_setup
    from face3d_train.step import Nets, context

    batch = {k: jnp.asarray(v) for k, v in _batches(trainer, dataset, 1)[0].items()}
    layout = trainer.setup.layout
    start = layout.num_shape + layout.num_expression
    rigid = np.r_[start:start + 3, start + POSE_DIM:start + POSE_DIM + 3]  # global pose, camera
    names = ("perceptual", "identity", "landmark")
    out = {}
    for flag in (True, False):
        config = micro_config(dataset)
        config.losses.rigid_from_landmarks = flag
        setup = make_setup(config, trainer.model, jax.random.key(0))
        state = _with_shape_codes(setup.init_state(jax.random.key(2)), jax.random.key(3))

        def term(params, name, setup=setup, state=state):
            ctx = context(setup, Nets(setup, state, setup.frozen, shape=params), batch,
                          jax.random.key(1), noise_mode="const")
            return T.TERMS[name](ctx)

        for name in names:
            value, grads = jax.jit(jax.value_and_grad(term), static_argnums=1)(
                state.shape.params, name)
            kernel = [np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)
                      if "head" in jax.tree_util.keystr(p)
                      and "kernel" in jax.tree_util.keystr(p)]
            assert len(kernel) == 1
            out[flag, name] = (float(value), np.abs(kernel[0][:, rigid]).max())
    for name in names:
        # The same arithmetic on the forward pass, fused perhaps otherwise: a
        # float32 sum of n ~ 1e4 terms in another order moves by ~sqrt(n) 2^-24.
        np.testing.assert_allclose(out[True, name][0], out[False, name][0], rtol=1e-5)
    assert out[True, "perceptual"][1] == 0.0 and out[True, "identity"][1] == 0.0
    assert out[True, "landmark"][1] > 0.0
    assert out[False, "perceptual"][1] > 0.0 and out[False, "identity"][1] > 0.0


# One and eight devices run one global program; what differs is the order in
# which XLA adds the batch's partial sums (each device its share, then an
# all-reduce) and the fusion of the switch step against the phase steps. So
# they agree up to float32 rounding, not bit for bit, and a trajectory of Adam
# steps cannot be compared element by element: Adam's first steps move an
# element by about lr * g / |g| however small g is, so an element whose
# gradient is at the rounding level moves by +-lr at rounding's whim (on an
# Intel Xeon 3 of 8 elements of one leaf differed after 6 steps; on an AMD EPYC
# one element of 4096). What must hold on any CPU: one step from the same state
# and batch, with SGD in place of Adam (an update linear in the gradient, so a
# rounding difference stays one), gives the same losses and the same update.
#
# Tolerances. Measured on an AMD EPYC (one step per phase): losses agree to
# 5e-6 relative; D's, G's and the backbone's gradients bit for bit; the shape
# phase's gradients to 1e-4 of each leaf's RMS (a vertex moved by a rounding
# flips a pixel's triangle near an edge). A float32 sum of n = 8 x 32^2 terms
# in another order differs by about sqrt(n) * 2^-24 ~ 5e-6 of its terms'
# scale, and one flipped pixel in 32^2 changes one image's loss by ~1e-3 of
# it. So a metric may move by 1e-3 of its size and a side's update by 1e-3 of
# its norm (10x the largest measured leaf difference). A sharding error
# changes whole terms: a statistic over a shard instead of the identity group
# or the batch, noise from another key: a loss by tens of percent.
METRIC_RTOL, METRIC_ATOL = 1e-3, 1e-7
UPDATE_RTOL = 1e-3


def _with_sgd(trainer):
    """The trainer with plain SGD at the config's learning rates for its Adams."""
    o = trainer.config.optim
    trainer.setup = dataclasses.replace(
        trainer.setup, shape_tx=optax.sgd(float(o.shape.lr)),
        g_tx=optax.sgd(float(o.gan.g_lr)), d_tx=optax.sgd(float(o.gan.d_lr)))
    return trainer


def _with_shape_codes(state, key):
    """E_shape's code head starts at zero, so every shape code and the
    shape-centre term are 0; a random head (std 0.01) makes the identity groups
    matter."""
    def perturb(path, x):
        if "head" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path):
            return x + 0.01 * jax.random.normal(key, x.shape, x.dtype)
        return x
    return state.replace(shape=state.shape.replace(
        params=jax.tree_util.tree_map_with_path(perturb, state.shape.params)))


def _updates(before, after) -> dict[str, np.ndarray]:
    """Each side's update (after - before), all its leaves flattened, float64."""
    out = {}
    for side, get in (("shape", lambda s: s.shape.params), ("g", lambda s: s.albedo.g),
                      ("d", lambda s: s.albedo.d)):
        delta = np.concatenate([np.ravel(np.asarray(b, np.float64) - np.asarray(a, np.float64))
                                for a, b in zip(_leaves(get(before)), _leaves(get(after)),
                                                strict=True)])
        out[side] = delta
    return out


@pytest.mark.multidevice
def test_one_and_eight_devices_compute_the_same_step(trainer, dataset):
    """One step of each phase from the same state and batch, on 1 device with
    the switch step and on 8 with the phase steps (so the two selectors are
    compared too), SGD in place of Adam: the same metrics, the same update."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    batches = _batches(trainer, dataset, 6)
    steps = {int(trainer.setup.phase_of(s)): s for s in range(6)}  # one step per phase
    assert sorted(steps) == [0, 1, 2]
    runs = []
    for devices, selector in ((1, "switch"), (8, "phase")):
        config = micro_config(dataset)
        config.selector = selector
        t = _with_sgd(Trainer(config, trainer.model, make_mesh(jax.devices()[:devices])))
        start = jax.device_get(_with_shape_codes(t.init_state(), jax.random.key(7)))
        results = {}
        for phase, s in steps.items():
            state = jax.tree.map(lambda x: x.copy(), jax.device_put(start, t.replicated))
            state = state.replace(step=jnp.int32(s))
            new, metrics = t.step(state, to_global(batches[s], t.data_sharding), s)
            results[phase] = (jax.device_get(new), jax.device_get(metrics))
        runs.append((start, results))
    (start, one), (start8, eight) = runs
    for get in (lambda s: s.shape.params, lambda s: s.albedo.g, lambda s: s.albedo.d):
        assert _same(get(start), get(start8))
    for phase in steps:
        (a_state, a), (b_state, b) = one[phase], eight[phase]
        assert float(a["finite"]) == float(b["finite"]) == 1.0
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=METRIC_RTOL, atol=METRIC_ATOL,
                                       err_msg=f"{PHASES[phase]} step: {k}")
        da, db = _updates(start, a_state), _updates(start, b_state)
        for side in da:
            norm = np.linalg.norm(da[side])
            assert np.linalg.norm(db[side] - da[side]) <= UPDATE_RTOL * norm, (
                PHASES[phase], side, np.linalg.norm(db[side] - da[side]), norm)

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
