"""Which shape-phase loss terms push E_shape's shape codes toward the truth:
each term's gradient on the codes of held-out teacher samples, its size, and
its cosine with the direction to the true shape.

    python -m face3d_eval.term_gradients --config tiny --workdir runs/tiny

For a researcher reweighing losses (Sec. 4.1, `losses.shape`): on G x K
held-out samples (G identities seen K ways, `teacher.identity_views`,
batched as the trainer batches them, so the shape-centre term is defined), it
takes the state at step 0 (with the run's shape prior and F's head, if any)
and at every checkpoint in WORKDIR/checkpoints, and
for each weighted term t of the shape phase computes g_t = d(weight_t * t) /
d(shape codes) (B, S), holding everything else of the step fixed (G_Ab's EMA
albedo, the generators' constant noise). It prints |g_t| (mean over samples)
and the cosine of the descent step -g_t with (true shape - predicted shape),
over all S coefficients and over the first 5 (most of the teacher's shape
variance): near 0 means the term moves the shape without telling it. No
peer: nothing is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

try:
    import face3d_train  # noqa: F401
except ImportError:  # a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_jax import teacher as tt  # noqa: E402
from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_train import terms as T  # noqa: E402
from face3d_train.checkpoint import Checkpointer  # noqa: E402
from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import generate_config  # noqa: E402
from face3d_train.evaluation import held_out_batch  # noqa: E402
from face3d_train.identity import ensure_identity_head  # noqa: E402
from face3d_train.loop import Trainer, load_model, make_mesh  # noqa: E402
from face3d_train.prior import ensure_shape_prior  # noqa: E402
from face3d_train.step import Nets, context  # noqa: E402

_FIRST = 5  # leading shape coefficients of the second cosine


def cosines(step, to_truth, first: int = _FIRST):
    """Mean cosine of step (B, S) with to_truth (B, S), over all S and the first
    `first` coefficients; rows with a zero vector count as 0. Returns 2 floats."""
    def cos(a, b):
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return float(np.mean(np.where(den > 0, np.sum(a * b, 1) / np.where(den > 0, den, 1), 0)))

    return cos(step, to_truth), cos(step[:, :first], to_truth[:, :first])


def make_term_gradients(trainer):
    """A function (state, batch) -> (shape (B, S), {term: gradient (B, S)}):
    the predicted shape codes and, per weighted shape term, the gradient of
    weight * term with respect to them. One compiled function per term."""
    setup = trainer.setup
    weights = {n: w for n, w in setup.weights["shape"].items() if w}
    num_shape = setup.layout.num_shape

    def nets_of(state, frozen):
        return Nets(setup, state, frozen, g=state.albedo.g_ema)

    def loss(name, shape, state, batch, frozen):
        nets = nets_of(state, frozen)
        rest = nets.encoder(batch["crop"])[:, num_shape:]
        # E_shape's output with its shape part given: the gradient is the
        # term's on the codes, not through the encoder's weights.
        nets.encoder = lambda _: jnp.concatenate([shape, rest], axis=-1)
        ctx = context(setup, nets, batch, jax.random.key(0), noise_mode="const")
        return weights[name] * T.TERMS[name](ctx)

    codes = jax.jit(lambda state, batch, frozen: nets_of(state, frozen).encoder(
        batch["crop"])[:, :num_shape])
    grads = {n: jax.jit(jax.grad(functools.partial(loss, n))) for n in weights}

    def run(state, batch):
        shape = codes(state, batch, trainer.frozen)
        return np.asarray(shape), {n: np.asarray(g(shape, state, batch, trainer.frozen))
                                   for n, g in grads.items()}

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny, paper or a config file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default="", help="a run's folder (its checkpoints)")
    ap.add_argument("--batches", type=int, default=2, help="held-out batches of G x K")
    ap.add_argument("--seed", type=int, default=None,
                    help="the held-out draw (default: eval.seed, the trainer's held-out key)")
    args = ap.parse_args(argv)
    folder = Path(args.workdir) / "checkpoints"
    if args.workdir and not folder.is_dir():
        ap.error(f"--workdir {args.workdir}: no checkpoints folder")

    config = apply_overrides(load(args.config), args.set)
    model = load_model(config)
    # The run's F head and shape prior, as its training used them (none
    # without a workdir: F without a head, E_shape from its initialisation).
    head = ensure_identity_head(config, args.workdir, model=model) if args.workdir else None
    trainer = Trainer(config, model, make_mesh(jax.devices()[:1]), identity_head=head)
    prior = (ensure_shape_prior(config, args.workdir, trainer.setup, progress=False)
             if args.workdir else None)
    groups, views = trainer.setup.groups
    teacher = TeacherSource(generate_config(config), model).world
    seed = int(config.eval.seed) if args.seed is None else args.seed
    w = tt.identity_views(teacher, jax.random.key(seed), groups * args.batches, views)
    held = tt.held_out_from_w(teacher, w, int(config.data.generate.crop_size))
    size, whole = groups * views, held_out_batch(held)
    batches = [{k: v[i:i + size] for k, v in whole.items()} for i in range(0, held.count, size)]

    term_gradients = make_term_gradients(trainer)
    print(f"config {config.name!r}: {len(batches)} held-out batches of {groups} identities x "
          f"{views} views")
    print(f"| step | term | gradient norm | cos, all | cos, first {_FIRST} |")
    print("|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:
        ckpt = (stack.enter_context(Checkpointer(folder, keep=1000, save_every=1,
                                                 async_save=False)) if args.workdir else None)
        steps = [0] + ([s for s in ckpt.all_steps() if s != 0] if ckpt else [])
        for step in steps:
            state = (trainer.init_state(prior) if step == 0
                     else ckpt.restore(trainer.abstract_state(), step)[0])
            parts = [term_gradients(state, b) for b in batches]
            pred = np.concatenate([p[0] for p in parts])
            truth = np.zeros_like(pred)
            k = min(pred.shape[1], held.shape.shape[1])
            truth[:, :k] = held.shape[:, :k]
            for name in parts[0][1]:
                g = np.concatenate([p[1][name] for p in parts])
                c_all, c_first = cosines(-g, truth - pred)
                print(f"| {step} | {name} | {np.mean(np.linalg.norm(g, axis=1)):.2e} | "
                      f"{c_all:+.3f} | {c_first:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
