"""How much of the teacher's shape a supervised read-out can recover: ridge
regression from E_shape's backbone features, and from the true landmarks, to
the true shape coefficients.

    python -m face3d_eval.shape_probe --config tiny --scans 1024
    python -m face3d_eval.shape_probe --config tiny --scans 192 --views 6   # tiny's data size

The paper's E_shape starts from MICA, a shape regressor trained on 3D scans
(Sec. 5.2, `face3d_jax.nets.mica`); the teacher world has no MICA weights, but
its samples come with their true FLAME shape, so a supervised start can be
measured here. Two read-outs are fitted, closed-form ridge on standardised
inputs for each penalty, on S fresh teacher samples ("scans", rendered and
cropped as the training set is; with `--views K`, S / K identities seen K ways
as `teacher.identity_views` draws them, like the dataset's edits):
  features   the encoder's frozen features (`ShapeEncoder.shape_features`:
             the pooled last stage for the linear head, the normalised ArcFace
             embedding for MICA's): the best linear head on this backbone;
  landmarks  the 68 true 2D landmarks in crop pixels: what an encoder that
             located every landmark exactly could tell, linearly, with 3D
             supervision (the landmark term is the rendering losses' only
             geometric target, Sec. 4.1).
It prints the held-out shape error (`metrics.mesh_error_mm`, neutral
meshes aligned with scale as `eval/shape_error_mm` aligns them; and over NoW's
face region, `eval/shape_error_now_mm`) on samples drawn with
`config.eval.seed`, the trainer's evaluation draw, against the mean face's.
A ratio well above 0.5 means even 3D supervision would not halve the shape
error from that input and that many scans. No peer: nothing is timed.
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
from flax import nnx  # noqa: E402

from face3d_jax import metrics  # noqa: E402
from face3d_jax import teacher as tt  # noqa: E402
from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import generate_config  # noqa: E402
from face3d_train.loop import load_model  # noqa: E402
from face3d_train.models import build_encoder  # noqa: E402


def ridge_fit(x, y, penalty: float):
    """Ridge regression y ~ x A + b on standardised x, in whichever of the primal
    or dual form is smaller. x: (N, D), y: (N, K) float64. Returns a predictor
    (M, D) -> (M, K)."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z, y_mean = (x - mu) / sd, y.mean(0)
    if z.shape[1] <= z.shape[0]:
        a = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ (y - y_mean))
    else:
        a = z.T @ np.linalg.solve(z @ z.T + penalty * np.eye(z.shape[0]), y - y_mean)
    return lambda q: ((q - mu) / sd) @ a + y_mean


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny, paper or a config file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scans", type=int, default=1024, help="training samples of the fit")
    ap.add_argument("--held", type=int, default=64, help="held-out samples scored")
    ap.add_argument("--views", type=int, default=1,
                    help="scans per identity (S / views identities, shapes shared)")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0, 1000.0])
    ap.add_argument("--seed", type=int, default=777, help="the scans' draw (not eval.seed)")
    args = ap.parse_args(argv)

    if args.views < 1 or args.scans % args.views:
        ap.error(f"--views {args.views} must be at least 1 and divide --scans {args.scans}")
    config = apply_overrides(load(args.config), args.set)
    if args.seed == int(config.eval.seed):
        ap.error(f"--seed {args.seed} is eval.seed: the scans would be the held-out samples")
    model = load_model(config)
    teacher = TeacherSource(generate_config(config), model).world
    crop = int(config.data.generate.crop_size)
    if args.views == 1:
        scans = tt.make_held_out(teacher, jax.random.key(args.seed), args.scans, crop)
    else:
        w = tt.identity_views(teacher, jax.random.key(args.seed), args.scans // args.views,
                              args.views)
        scans = tt.held_out_from_w(teacher, w, crop)
    held = tt.make_held_out(teacher, jax.random.key(int(config.eval.seed)), args.held, crop)
    encoder = build_encoder(config.model, nnx.Rngs(int(config.seed)))

    @nnx.jit
    def features(enc, crops):
        return enc.shape_features(crops)

    def read(crops):
        return np.concatenate([np.asarray(features(encoder, jnp.asarray(crops[i:i + 32])),
                                          np.float64) for i in range(0, len(crops), 32)])

    num_shape = int(config.model.num_shape)
    y = np.zeros((args.scans, num_shape))
    k = min(num_shape, scans.shape.shape[1])
    y[:, :k] = scans.shape[:, :k]
    truth = jnp.asarray(held.neutral)
    face = metrics.now_face_mask(model, truth)

    def errors(shape) -> tuple[float, float]:
        pred = metrics.neutral_vertices(model, jnp.asarray(shape, jnp.float32))
        return (float(jnp.mean(metrics.mesh_error_mm(pred, truth, scale=True))),
                float(jnp.mean(metrics.mesh_error_mm(pred, truth, scale=True, mask=face))))

    def lmk(h):
        return np.asarray(h.landmarks, np.float64).reshape(len(h.landmarks), -1)

    x_scan, x_held = read(scans.crop), read(held.crop)
    inputs = {"features": (x_scan, x_held), "landmarks": (lmk(scans), lmk(held))}
    mean = errors(np.zeros((args.held, num_shape)))
    head = "MICA (normalised embedding)" if encoder.mica is not None else "linear (pooled map)"
    print(f"teacher world of config {config.name!r}: {args.scans} scans "
          f"({args.scans // args.views} identities x {args.views}), {args.held} held-out "
          f"samples, {crop}^2 crops; E_shape backbone {config.model.encoder.backbone!r}, shape "
          f"head {head}, {x_scan.shape[1]} features")
    print("| read-out | ridge | whole head mm | of the mean face's | NoW face region mm "
          "| of the mean face's |")
    print("|---|---|---|---|---|---|")
    print(f"| mean face | - | {mean[0]:.3f} | 100% | {mean[1]:.3f} | 100% |")
    for name, (x_fit, x_eval) in inputs.items():
        for penalty in args.ridge:
            got = errors(ridge_fit(x_fit, y, penalty)(x_eval))
            print(f"| {name} | {penalty:g} | {got[0]:.3f} | {got[0] / mean[0]:.0%} | "
                  f"{got[1]:.3f} | {got[1] / mean[1]:.0%} |")


if __name__ == "__main__":
    main()
