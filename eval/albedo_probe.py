"""How well any generator could draw a *held-out* identity's albedo from w,
given albedos of N training identities: ridge regression from w to the true
UV albedo, scored as the trainer's evaluation scores G_Ab.

    python -m face3d_eval.albedo_probe --config tiny --identities 32 128 512
    python -m face3d_eval.albedo_probe --workdir runs/tiny --identities 64 128 --ridge 10 100

G_Ab learns w -> albedo from the training set's pairs only. In the teacher
world an identity's albedo is a fixed non-linear function (a tanh MLP,
`teacher.params`) of w's identity dimensions (192 of 512 by default), so a
generator fitted on N identities has seen the function on an N-dimensional
slice of that space at most. This probe fits the best *linear* map from w to
the whole albedo map (closed-form ridge on standardised w, one penalty per
row, on the teacher's true albedos: cleaner targets than the dataset's
pseudo-ground truth A_GT) on N fresh identities, and prints its
`eval/albedo_psnr` on the trainer's evaluation draw (`config.eval.seed`,
`config.eval.identities` identities unless --held) beside that of the N
identities' mean albedo (`eval/albedo_psnr_mean_baseline`'s counterpart).
A gap of a few tenths of a dB says the training identities are too few for
any generator to tell new people's albedos apart, whatever its training;
it is a read-out on the truth, not a bound on every non-linear map.

With --workdir RUN (a `face3d train` folder, its config and last checkpoint)
it also prints `eval/id_similarity` of the run with each albedo in the render
in place of G_Ab's (the truth, the run's mean A_GT, the N identities' mean
true albedo, each ridge read-out), everything else as evaluated: how far an
albedo learnt from N identities could move F's figure. No peer: nothing is
timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import face3d_train  # noqa: F401
except ImportError:  # a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_eval.shape_probe import ridge_fit  # noqa: E402
from face3d_jax import metrics  # noqa: E402
from face3d_jax import teacher as tt  # noqa: E402
from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import generate_config  # noqa: E402
from face3d_train.loop import load_model  # noqa: E402


def true_albedo(teacher, key, count: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`count` fresh teacher identities: w's first row (N, 512) float64 (an
    identity's rows are all equal) and the true albedo (N, Ta, Ta, 3) float32."""
    scene = jax.jit(lambda w: tt.scene(teacher, w).albedo)
    ws, maps = [], []
    for i, k in enumerate(jax.random.split(key, -(-count // batch))):
        n = min(batch, count - i * batch)
        w = tt.mapping(teacher, jax.random.normal(k, (n, teacher.config.style_dim)))
        ws.append(np.asarray(w[:, 0], np.float64))
        maps.append(np.asarray(scene(w), np.float32))
    return np.concatenate(ws), np.concatenate(maps)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny, small, paper or a config file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--identities", type=int, nargs="+", default=[32, 128, 512],
                    help="training identities of each fit")
    ap.add_argument("--held", type=int, default=0,
                    help="held-out identities scored (0: config.eval.identities)")
    ap.add_argument("--ridge", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    ap.add_argument("--seed", type=int, default=777, help="the fits' draw (not eval.seed)")
    ap.add_argument("--workdir", default=None,
                    help="a run whose identity similarity to score with each albedo (its "
                         "config replaces --config)")
    args = ap.parse_args(argv)

    if args.workdir:
        from face3d_train.trained import read_run_config

        config = apply_overrides(read_run_config(args.workdir), args.set)
    else:
        config = apply_overrides(load(args.config), args.set)
    if args.seed == int(config.eval.seed):
        ap.error(f"--seed {args.seed} is eval.seed: the fit would see the held-out identities")
    model = load_model(config)
    teacher = TeacherSource(generate_config(config), model).world
    held_n = args.held or int(config.eval.identities)
    if args.workdir and held_n != int(config.eval.identities):
        ap.error(f"--held {held_n}: with --workdir the held-out identities are the run's "
                 f"evaluation's ({int(config.eval.identities)})")
    crop = int(config.data.generate.crop_size)
    held = tt.make_held_out(teacher, jax.random.key(int(config.eval.seed)), held_n, crop)
    truth = jnp.asarray(held.albedo)
    mask = jnp.asarray(metrics.face_uv_mask(model, int(truth.shape[1])))
    x_held = np.asarray(held.w[:, 0], np.float64)
    x_all, y_all = true_albedo(teacher, jax.random.key(args.seed), max(args.identities))
    flat = y_all.reshape(len(y_all), -1).astype(np.float64)

    def psnr(pred) -> float:
        pred = jnp.asarray(np.clip(pred, 0.0, 1.0).reshape(truth.shape), jnp.float32)
        return float(jnp.mean(metrics.albedo_psnr(pred, truth, mask)))

    print(f"teacher world of config {config.name!r}: {held_n} held-out identities "
          f"(eval.seed {int(config.eval.seed)}), albedo {truth.shape[1]}^2, PSNR over the "
          f"face region of the UV layout")
    print("| training identities | mean albedo dB | best ridge | ridge w -> albedo dB | gain dB |")
    print("|---|---|---|---|---|")
    for n in args.identities:
        x, y = x_all[:n], flat[:n]
        base = psnr(np.broadcast_to(y.mean(0), (held_n, y.shape[1])))
        scores = {p: psnr(ridge_fit(x, y, p)(x_held)) for p in args.ridge}
        best = max(scores, key=scores.get)
        print(f"| {n} | {base:.2f} | {best:g} | {scores[best]:.2f} | {scores[best] - base:+.2f} |")
    if args.workdir:
        similarity = run_similarity(config, args.workdir, model)

        def maps(flat_maps):
            return jnp.asarray(np.clip(flat_maps, 0.0, 1.0).reshape(truth.shape), jnp.float32)

        print(f"\nidentity similarity of {args.workdir}'s renders with each albedo "
              f"(eval/id_similarity; G_Ab's: {similarity(None):.3f})")
        print("| albedo | id similarity |\n|---|---|")
        print(f"| the truth | {similarity(truth):.3f} |")
        if similarity.mean_agt is not None:
            print(f"| the run's mean A_GT | {similarity(similarity.mean_agt):.3f} |")
        for n in args.identities:
            x, y = x_all[:n], flat[:n]
            print(f"| mean true albedo, {n} identities | "
                  f"{similarity(maps(np.broadcast_to(y.mean(0), (held_n, y.shape[1])))):.3f} |")
            for p in args.ridge:
                print(f"| ridge {p:g}, {n} identities | "
                      f"{similarity(maps(ridge_fit(x, y, p)(x_held))):.3f} |")


def run_similarity(config, workdir, model):
    """albedo (N, Ta, Ta, 3) or None (G_Ab's) -> the run's eval/id_similarity;
    `.mean_agt` the run's mean A_GT broadcast over the held-out identities."""
    from pathlib import Path

    from face3d_train.checkpoint import Checkpointer
    from face3d_train.data import ensure_dataset
    from face3d_train.evaluation import HeldOutEval
    from face3d_train.identity import ensure_identity_head
    from face3d_train.loop import Trainer, make_mesh

    workdir = Path(workdir)
    head = ensure_identity_head(config, workdir, model=model, progress=False)
    trainer = Trainer(config, model, make_mesh(jax.devices()[:1]), identity_head=head)
    held = HeldOutEval(trainer, config, dataset=ensure_dataset(config, workdir, progress=False))
    with Checkpointer(workdir / "checkpoints", save_every=1, read_only=True) as ckpt:
        state, _ = ckpt.restore(trainer.abstract_state())

    def similarity(albedo):
        return held.id_similarity(state, albedo)

    similarity.mean_agt = None
    if held.mean_albedo is not None:
        shape = held.held.albedo.shape
        similarity.mean_agt = jnp.broadcast_to(jnp.asarray(held.mean_albedo),
                                               shape[:1] + held.mean_albedo.shape[-3:])
    return similarity


if __name__ == "__main__":
    main()
