"""How well `face3d reconstruct` recovers held-out teacher faces: GAN
inversion of N held-out teacher images (the trainer's evaluation draw) and
E_shape on their crops, scored against the truth as the trainer's evaluation
scores (NoW-region shape error, albedo PSNR), beside the same run's faces of
the *true* w (what a perfect inversion would give).

    python -m face3d_eval.reconstruction --workdir runs/tiny --count 8 --steps 1000

The images are the teacher's own renders, so the inversion's target is
aligned as the source's images are; E_shape reads the crop around dlib's
landmarks (as for a photograph). No peer: nothing is timed.
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

from face3d_jax import metrics  # noqa: E402
from face3d_jax import teacher as tt  # noqa: E402
from face3d_train.reconstruct import InversionConfig, reconstruct  # noqa: E402
from face3d_train.trained import load_run  # noqa: E402


def scores(run, faces, held) -> dict[str, float]:
    """NoW-region shape error (mm) and albedo PSNR (dB) of faces against the truth."""
    model = run.model
    pred = metrics.neutral_vertices(model, jnp.asarray(faces.codes["shape"]))
    mask = metrics.now_face_mask(model, held.neutral)
    truth = jnp.asarray(held.albedo)
    albedo = jax.image.resize(jnp.asarray(faces.albedo), truth.shape, "linear")
    face = jnp.asarray(metrics.face_uv_mask(model, int(truth.shape[1])))
    return {"shape_error_now_mm": float(jnp.mean(metrics.mesh_error_mm(
                pred, jnp.asarray(held.neutral), scale=True, mask=mask))),
            "albedo_psnr": float(jnp.mean(metrics.albedo_psnr(albedo, truth, face)))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--w-plus", action="store_true")
    ap.add_argument("--out", default=None, help="also write the reconstructions here")
    args = ap.parse_args(argv)

    run = load_run(args.workdir)
    if run.config.data.generate.source != "teacher":
        ap.error("the run's image source has no truth (a teacher-world run is needed)")
    # The evaluation's draw, in order, keeping the images where dlib finds the
    # face both in the image and at the source's resolution (tiny's 64 px
    # images defeat it now and then).
    held = tt.make_held_out(run.source.world, jax.random.key(int(run.config.eval.seed)),
                            4 * args.count, run.crop_size)
    images = np.round(np.asarray(held.image) * 255.0).astype(np.uint8)
    found = np.flatnonzero(np.isfinite(run.detect(images)).all(axis=(1, 2)))
    keep = found[:args.count]
    print(f"dlib finds the face in {len(found)} of {len(images)} held-out images; the first "
          f"{len(keep)} are reconstructed")
    held = jax.tree.map(lambda x: np.asarray(x)[keep], held)
    images = list(images[keep])
    names = [f"held{i:02d}" for i in keep]
    out = args.out or str(Path(args.workdir) / "reconstruction_probe")
    _, faces, inv = reconstruct(run, images, out, names=names,
                                config=InversionConfig(steps=args.steps, w_plus=args.w_plus))
    rec = scores(run, faces, held)
    ref = scores(run, run.faces(held.w), held)
    first, last = inv.losses[0], inv.losses[-1]
    print(f"{len(keep)} held-out teacher images of {args.workdir} (step {run.step}), "
          f"{args.steps} inversion steps ({'w+' if args.w_plus else 'w'})")
    print(f"inversion loss: {first.mean():.4f} -> {last.mean():.4f} (lower for "
          f"{int((last < first).sum())} of {len(keep)})")
    print("| faces from | NoW-region shape mm | albedo PSNR dB |\n|---|---|---|")
    print(f"| the inverted w and the photo's crop | {rec['shape_error_now_mm']:.3f} | "
          f"{rec['albedo_psnr']:.2f} |")
    print(f"| the true w (`face3d generate`) | {ref['shape_error_now_mm']:.3f} | "
          f"{ref['albedo_psnr']:.2f} |")


if __name__ == "__main__":
    main()
