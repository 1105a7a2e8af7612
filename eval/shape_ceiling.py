"""How much of the teacher's shape the landmark term can tell: the shape error
of landmark fits that reach the true landmarks, one view or K views at a time.

    python -m face3d_eval.shape_ceiling --config tiny --identities 16 --views 4

E_shape learns shape from rendering losses whose only geometric target is the
68 landmarks (Sec. 4.1); identity and perceptual terms see shape only through
shading. This measures the ceiling of the geometric part in the teacher world:
for G held-out identities, each seen in K views that share identity (shape,
albedo) and differ in expression, pose, light and camera
(`teacher.identity_views`), it fits E_shape's own output codes
(`models.decode_codes`: shape, expression, global and jaw pose, camera around
the crop prior) to the true landmarks in crop units with the trainer's
landmark loss, by Adam from the mean face:
  single  each view its own shape (what one image can tell);
  shared  one shape per identity for its K views (what the shape-centre loss,
          Eq. 4, lets a batch of K views tell).
It prints the shape error (mm, neutral meshes, `metrics.mesh_error_mm`,
aligned with scale as NoW does and without, and over NoW's face region as
`eval/shape_error_now_mm`) of the mean face and of each fit,
and the fits' landmark error in crop pixels. No peer: nothing is timed.
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
import optax  # noqa: E402

from face3d_jax import losses as L  # noqa: E402
from face3d_jax import metrics  # noqa: E402
from face3d_jax import teacher as tt  # noqa: E402
from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_jax.flame import flame_forward  # noqa: E402
from face3d_jax.render import cameras  # noqa: E402
from face3d_jax.render.renderer import WeakPerspectiveCamera  # noqa: E402
from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import generate_config  # noqa: E402
from face3d_train.loop import load_model  # noqa: E402
from face3d_train.models import CodeLayout, crop_camera_prior, decode_codes  # noqa: E402


def fit_codes(model, layout: CodeLayout, landmarks, crop_size: int, views: int, *,
                  shared: bool, steps: int, lr: float = 1e-2, prior: float = 0.0):
    """Fits E_shape's codes to landmarks, one shape per view or per identity.

    Unlike `face3d_jax.fitting.fit_landmarks` (FLAME's parameters, its own
    camera initialisation and contour weights), the parameters here are what
    E_shape outputs, decoded as the trainer decodes them, and the loss is the
    trainer's landmark term: the fit is the best the encoder could do.

    Args:
      model: the FLAME model; layout: E_shape's code layout.
      landmarks: (G * K, 68, 2) float32 crop pixels (centres at j + 0.5).
      crop_size: c; views: K; shared: one shape per group of K views.
      steps, lr: Adam; prior: weight of (|s|^2 + |psi|^2) per image.
    Returns:
      shape (G * K, S) float32 and the fit's landmarks (G * K, 68, 2) in crop pixels.
    """
    n = landmarks.shape[0]
    groups = n // views if shared else n
    cam_prior = jnp.asarray(crop_camera_prior(model))
    target = jnp.asarray(landmarks, jnp.float32) * (2.0 / crop_size)
    per_image = layout.size - layout.num_shape

    def project(params):
        rest, shape = params
        shape = jnp.repeat(shape, n // groups, axis=0)
        codes = decode_codes(jnp.concatenate([shape, rest], axis=-1), layout, cam_prior)
        zeros = jnp.zeros((n, 3), jnp.float32)
        out = flame_forward(model, codes["shape"], codes["expression"], codes["global_pose"],
                            zeros, codes["jaw_pose"], jnp.zeros((n, 6), jnp.float32))
        cam = WeakPerspectiveCamera(cam=codes["camera"])
        pixels = cameras.clip_to_pixels(cam.project(out.landmarks), (crop_size, crop_size))
        return pixels, codes

    def loss(params):
        pixels, codes = project(params)
        reg = jnp.sum(codes["shape"] ** 2) + jnp.sum(codes["expression"] ** 2)
        return L.landmark_loss(pixels * (2.0 / crop_size), target) + prior * reg / n

    opt = optax.adam(lr)
    params = (jnp.zeros((n, per_image), jnp.float32),
              jnp.zeros((groups, layout.num_shape), jnp.float32))

    @jax.jit
    def run(params):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return jnp.repeat(p[1], n // groups, axis=0), project(p)[0]

    return run(params)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny, paper or a config file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--prior", type=float, nargs="+", default=[0.0, 1e-4])
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)

    config = apply_overrides(load(args.config), args.set)
    model = load_model(config)
    teacher = TeacherSource(generate_config(config), model).world
    crop = int(config.data.generate.crop_size)
    w = tt.identity_views(teacher, jax.random.key(args.seed), args.identities, args.views)
    held = tt.held_out_from_w(teacher, w, crop)
    layout = CodeLayout(int(config.model.num_shape), int(config.model.num_expression))
    truth = jnp.asarray(held.neutral)

    face = metrics.now_face_mask(model, truth)

    def errors(shape):
        pred = metrics.neutral_vertices(model, shape)
        return (float(jnp.mean(metrics.mesh_error_mm(pred, truth, scale=True))),
                float(jnp.mean(metrics.mesh_error_mm(pred, truth))),
                float(jnp.mean(metrics.mesh_error_mm(pred, truth, scale=True, mask=face))))

    print(f"teacher world of config {config.name!r}: {args.identities} identities x "
          f"{args.views} views, {crop}^2 crops, {layout.num_shape} shape coefficients")
    print("| fit | shape prior | landmark px | shape error mm (scaled) | "
          "shape error mm (metric) | NoW face region mm (scaled) |")
    print("|---|---|---|---|---|---|")
    mean = errors(jnp.zeros((held.count, layout.num_shape), jnp.float32))
    print(f"| mean face | - | - | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |")
    for prior in args.prior:
        for shared in (False, True):
            shape, pixels = fit_codes(model, layout, held.landmarks, crop, args.views,
                                          shared=shared, steps=args.steps, prior=prior)
            px = float(np.mean(np.linalg.norm(np.asarray(pixels) - held.landmarks, axis=-1)))
            got = errors(shape)
            name = f"{args.views} views, one shape" if shared else "each view alone"
            print(f"| {name} | {prior:g} | {px:.3f} | "
                  + " | ".join(f"{g:.3f} ({g / m:.0%})" for g, m in zip(got, mean)) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
