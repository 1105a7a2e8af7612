"""How much of the teacher's shape E_shape's backbone features hold linearly:
ridge regression from what the shape head reads to the true shape coefficients.

    python -m face3d_eval.shape_probe --config tiny --scans 1024

The paper's E_shape starts from MICA, a shape regressor trained on 3D scans
(Sec. 5.2, `face3d_jax.nets.mica`); the teacher world has no MICA weights, but
its samples come with their true FLAME shape, so a supervised start can be
measured here. This fits the best linear read-out of the encoder's frozen
features (`ShapeEncoder.shape_features`: the pooled last stage for the linear
head, the normalised ArcFace embedding for MICA's) on S fresh teacher samples
("scans", rendered and cropped as the training set is), closed-form ridge on
standardised features for each penalty, and prints the shape error
(`teacher_eval.mesh_error_mm`, neutral meshes, aligned with scale as NoW and
`eval/shape_error_mm` align them) on held-out samples drawn with
`config.eval.seed`, the trainer's evaluation draw, against the mean face's.
A ratio well above 0.5 means even 3D supervision of the head alone, with the
backbone frozen, would not halve the shape error. No peer: nothing is timed.
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

from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_train import teacher_eval as te  # noqa: E402
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
    ap.add_argument("--ridge", type=float, nargs="+", default=[10.0, 100.0, 1000.0, 10000.0])
    ap.add_argument("--seed", type=int, default=777, help="the scans' draw (not eval.seed)")
    args = ap.parse_args(argv)

    config = apply_overrides(load(args.config), args.set)
    if args.seed == int(config.eval.seed):
        ap.error(f"--seed {args.seed} is eval.seed: the scans would be the held-out samples")
    model = load_model(config)
    teacher = TeacherSource(generate_config(config), model).world
    crop = int(config.data.generate.crop_size)
    scans = te.make_held_out(teacher, jax.random.key(args.seed), args.scans, crop)
    held = te.make_held_out(teacher, jax.random.key(int(config.eval.seed)), args.held, crop)
    encoder = build_encoder(config.model, nnx.Rngs(int(config.seed)))

    @nnx.jit
    def features(enc, crops):
        return enc.shape_features(crops)

    def read(crops):
        return np.concatenate([np.asarray(features(encoder, jnp.asarray(crops[i:i + 32])),
                                          np.float64) for i in range(0, len(crops), 32)])

    x_scan, x_held = read(scans.crop), read(held.crop)
    num_shape = int(config.model.num_shape)
    y = np.zeros((args.scans, num_shape))
    k = min(num_shape, scans.shape.shape[1])
    y[:, :k] = scans.shape[:, :k]
    truth = jnp.asarray(held.neutral)

    def error(shape) -> float:
        pred = te.neutral_vertices(model, jnp.asarray(shape, jnp.float32))
        return float(jnp.mean(te.mesh_error_mm(pred, truth, scale=True)))

    mean = error(np.zeros((args.held, num_shape)))
    head = "MICA (normalised embedding)" if encoder.mica is not None else "linear (pooled map)"
    print(f"teacher world of config {config.name!r}: {args.scans} scans, {args.held} held-out "
          f"samples, {crop}^2 crops; E_shape backbone {config.model.encoder.backbone!r}, shape "
          f"head {head}, {x_scan.shape[1]} features")
    print("| read-out | ridge | held-out shape error mm (NoW, scaled) | of the mean face's |")
    print("|---|---|---|---|")
    print(f"| mean face | - | {mean:.3f} | 100% |")
    for penalty in args.ridge:
        got = error(ridge_fit(x_scan, y, penalty)(x_held))
        print(f"| ridge | {penalty:g} | {got:.3f} | {got / mean:.0%} |")


if __name__ == "__main__":
    main()
