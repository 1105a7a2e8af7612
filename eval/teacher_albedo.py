"""FLAME fitting and pseudo-ground-truth albedo (Sec. 3.1-3.2) measured in the
teacher world, where the truth of every image is known.

For a batch of teacher images: the landmark fit (`fitting.fit_landmarks`) from
the teacher's true 68 landmarks (dlib's detector is not made for the synthetic
faces; the real-photo path is `face3d extract-albedo`), then the albedo
extraction through the fitted mesh and camera. Printed:
  - landmark error of the fit (pixels) and the coarse mesh's mean per-vertex
    error against the truth (mm; the fit's own pose and camera, so pose
    errors count), before (the mean face) and after;
  - PSNR against the teacher's albedo over the texels seen in the image, of
    the extracted albedo and of the naive texture (no shading removal), each
    also after the best single scale per image (albedo and light intensity
    are ambiguous up to a scale, texture.py's docstring);
  - the same with the true mesh and camera (the extraction's own error,
    without the fit's);
  - images per second of the fit and of the extraction (after compiling).

    python -m face3d_eval.teacher_albedo --batch 8 --resolution 256 --size 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import face3d_jax  # noqa: F401
except ImportError:  # run as `python eval/teacher_albedo.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from face3d_jax import fitting  # noqa: E402
from face3d_jax import texture as tex  # noqa: E402
from face3d_jax.flame import default_model  # noqa: E402
from face3d_jax.render.renderer import WeakPerspectiveCamera  # noqa: E402
from face3d_jax.teacher import TeacherConfig, make_teacher, sample  # noqa: E402


def psnr(a, b, mask, scaled=False):
    """PSNR (peak 1) over mask (B, Ta, Ta) per image; `scaled`: after the
    least-squares scale of a onto b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = []
    for ai, bi, mi in zip(a, b, np.asarray(mask)):
        x, y = ai[mi], bi[mi]
        if scaled:
            x = x * (np.sum(x * y) / max(np.sum(x * x), 1e-12))
        out.append(10 * np.log10(1.0 / max(np.mean((x - y) ** 2), 1e-12)))
    return np.array(out)


def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--size", type=int, default=256, help="albedo size (teacher and ours)")
    parser.add_argument("--fit-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = default_model()
    config = TeacherConfig(resolution=args.resolution, albedo_size=args.size)
    teacher = make_teacher(jax.random.key(args.seed), model, config)
    _, scene, truth = sample(teacher, jax.random.key(args.seed + 1), args.batch)
    res = (args.resolution, args.resolution)

    fit_fn = jax.jit(lambda t: fitting.fit_landmarks(model, t, res, steps=args.fit_steps))
    fit, fit_s = timed(fit_fn, truth.landmarks2d)
    start = fitting.decode(model, fitting.initial_params(model, truth.landmarks2d, res)).vertices
    lmk_px = np.linalg.norm(np.asarray(fit.landmarks2d - truth.landmarks2d), axis=-1).mean(1)

    def mm(v):
        return 1000 * np.linalg.norm(np.asarray(v - truth.coarse_vertices), axis=-1).mean(1)

    print(f"{args.batch} teacher images at {args.resolution}^2, albedo {args.size}^2")
    print(f"landmark fit: {lmk_px.mean():.2f} px mean landmark error; mesh error "
          f"{mm(start).mean():.1f} mm (mean face) -> {mm(fit.vertices).mean():.1f} mm; "
          f"{args.batch / fit_s:.2f} images/s")

    uvr = tex.uv_raster(model.uv_coords, model.uv_faces, args.size)
    extract = jax.jit(lambda img, v, cam: tex.pseudo_ground_truth_albedo(
        img, v, model.faces, model.uv_coords, model.uv_faces, WeakPerspectiveCamera(cam=cam),
        size=args.size, uvr=uvr))
    seen_fn = jax.jit(lambda img, v, cam: tex.extract_texture(
        img, v, model.faces, WeakPerspectiveCamera(cam=cam), uvr).confidence > 0)
    for name, verts, cam in (("fitted mesh", fit.vertices, fit.params.cam),
                             ("true mesh", truth.vertices, scene.camera)):
        out, ext_s = timed(extract, truth.image, verts, cam)
        seen = np.asarray(seen_fn(truth.image, verts, cam))
        rows = [(what, psnr(x, scene.albedo, seen), psnr(x, scene.albedo, seen, scaled=True))
                for what, x in (("albedo", out.albedo), ("naive texture", out.texture))]
        text = "; ".join(f"{what} {p.mean():.2f} dB ({q.mean():.2f} dB scaled)"
                         for what, p, q in rows)
        print(f"{name}: PSNR on seen texels: {text}; extraction {args.batch / ext_s:.2f} "
              "images/s")


if __name__ == "__main__":
    main()
