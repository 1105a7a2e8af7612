"""Evaluation during training, in the teacher world: held-out identities whose
true shape and albedo are known.

Metrics (written to metrics.jsonl and TensorBoard under eval/):
  shape_error_mm  mean per-vertex distance (mm) between the neutral mesh of the
                  predicted shape code and that of the true code, after
                  alignment by rotation, translation and scale (NoW's protocol:
                  the crop hides head size; metrics.py)
  shape_error_metric_mm   the same without the scale (a wrong head size counts)
  shape_error_now_mm      shape_error_mm over NoW's face region only
                  (`metrics.now_face_mask` of the true mesh), aligned
                  on it: what the NoW benchmark (the paper's Table 1) scores
  shape_error_now_mm_mean_face   the same of the mean face (shape code 0):
                  the yardstick of the two above (constant over a run; at
                  step 0 shape_error_now_mm is the shape prior's)
  albedo_psnr     PSNR (dB) of G_Ab's EMA albedo against the teacher's albedo
                  over the face region of the UV layout
  albedo_psnr_mean_baseline   the same for the training set's mean A_GT
                  (`data.mean_albedo`), one map for every identity: what a
                  G_Ab that ignored w would score. albedo_psnr above it means
                  G_Ab tells the held-out identities' albedos apart from w
  id_similarity   cosine of F's embeddings of each target (the held-out crop)
                  and of its render with G_Ab's EMA albedo, each aligned as the
                  identity term aligns them, mean over the identities (1 -
                  `identity`)
  id_similarity_mean_albedo   the same with the render's albedo replaced by the
                  training set's mean A_GT (same shape, expression, pose,
                  camera, light and displacement): id_similarity above it
                  means the generated albedo makes the render look more like
                  its person than the average face's colours do
  landmark_px     mean 2D landmark distance in crop pixels
  camera_scale    E_shape's weak-perspective scale over the crop prior's
                  (`models.crop_camera_prior`), mean: 1 frames the mean face
                  as the crop frames a face; below 1 the render is drawn
                  smaller. The image terms on F's maps fall as the face
                  shrinks (`step.context`): a camera_scale well below 1 with a
                  rising landmark_px points to that (0.43 and 9.3 px at the
                  end of a `tiny` run before `losses.rigid_from_landmarks`).
  photometric     MSE of the render against the crop over the render's mask
  identity, perceptual, landmark   the shape phase's rendering terms
  render_loss     their sum weighted as the shape phase weighs them
Everything is computed with the generators' constant noise, so the figures are
a function of the parameters only. With a StyleGAN2 source there is no truth:
only the rendering terms on the held-out images would be meaningful, and the
evaluation is skipped (logged); `eval.identities = 0` turns it off.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax import losses as L
from face3d_jax import metrics, teacher
from face3d_jax.data.dataset_sources import TeacherSource
from face3d_train import terms as T
from face3d_train.data import generate_config, mean_albedo
from face3d_train.step import Nets, context

log = logging.getLogger(__name__)
_RENDER_TERMS = ("identity", "perceptual", "landmark")


def held_out_batch(held: teacher.HeldOut) -> dict[str, jax.Array]:
    """A `teacher.HeldOut` as the trainer's batch: crop, landmarks, albedo
    and w (float32 arrays, N first), what `step.context` reads."""
    return dict(crop=jnp.asarray(held.crop), landmarks=jnp.asarray(held.landmarks),
                albedo=jnp.asarray(held.albedo), w=jnp.asarray(held.w))


class HeldOutEval:
    """Held-out teacher identities and the jitted evaluation of a state.

    Args:
      trainer: a loop.Trainer (setup, mesh shardings, frozen networks).
      config: the training config (eval.identities, eval.seed, data.generate).
      world: the teacher world (default: the one `config.data.generate` describes).
      dataset: the training dataset's folder, whose mean A_GT the baseline
        metrics use (`self.mean_albedo`: (Ta, Ta, 3) float32 in [0, 1], or
        (N, Ta, Ta, 3), one map per held-out identity, when set by hand);
        None: those metrics are not computed.
    """

    def __init__(self, trainer, config, world=None, dataset=None):
        self.trainer, self.setup = trainer, trainer.setup
        self.mean_albedo = None
        gen = config.data.generate
        self.enabled = gen.source == "teacher" and int(config.eval.identities) > 0
        if int(config.eval.identities) <= 0:
            return
        if not self.enabled:
            log.warning("evaluation needs the teacher world's truth; source %r has none, so "
                        "eval/* metrics are not computed", gen.source)
            return
        if world is None:
            world = TeacherSource(generate_config(config), trainer.model).world
        self.held = teacher.make_held_out(world, jax.random.key(int(config.eval.seed)),
                                          int(config.eval.identities), int(gen.crop_size))
        self.face_mask = metrics.face_uv_mask(trainer.model, int(self.held.albedo.shape[1]))
        # NoW's crop of each held-out truth: fixed, so computed once.
        self.now_mask = metrics.now_face_mask(trainer.model, self.held.neutral)
        weights = self.setup.weights["shape"]
        self.render_weights = {n: weights.get(n, 0.0) for n in _RENDER_TERMS}
        if dataset is not None:
            self.mean_albedo = mean_albedo(dataset)
        self._eval = jax.jit(self._metrics)
        self._images = jax.jit(self._image_grids)
        self._similarity = jax.jit(self._similarity_fn)

    def _outputs(self, state, batch, albedo=None):
        """The step's context with G_Ab's EMA; `albedo` (B, Ta, Ta, 3) replaces
        its albedo, everything else (the same key, constant noise) unchanged."""
        setup = self.setup
        nets = Nets(setup, state, self.trainer.frozen, g=state.albedo.g_ema)
        ctx = context(setup, nets, batch, jax.random.key(0), albedo=albedo, noise_mode="const")
        return ctx

    def _metrics(self, state, batch, neutral, albedo_true, face_mask, now_mask, mean_agt):
        ctx = self._outputs(state, batch)
        pred = metrics.neutral_vertices(self.setup.model, ctx.codes["shape"])
        r = ctx.render
        values = {n: T.TERMS[n](ctx) for n in _RENDER_TERMS}
        out = {
            "shape_error_mm": jnp.mean(metrics.mesh_error_mm(pred, neutral, scale=True)),
            "shape_error_metric_mm": jnp.mean(metrics.mesh_error_mm(pred, neutral)),
            "shape_error_now_mm": jnp.mean(metrics.mesh_error_mm(
                pred, neutral, scale=True, mask=now_mask)),
            "shape_error_now_mm_mean_face": jnp.mean(metrics.mesh_error_mm(
                metrics.neutral_vertices(self.setup.model, jnp.zeros_like(ctx.codes["shape"])),
                neutral, scale=True, mask=now_mask)),
            "albedo_psnr": jnp.mean(metrics.albedo_psnr(ctx.albedo, albedo_true, face_mask)),
            "landmark_px": jnp.mean(jnp.linalg.norm(r.landmarks2d - batch["landmarks"], axis=-1)),
            "camera_scale": jnp.mean(ctx.codes["camera"][:, 0]) / self.setup.camera_prior[0],
            "photometric": L.masked_mse(r.image, batch["crop"], r.mask),
            "render_loss": sum(self.render_weights[n] * values[n] for n in _RENDER_TERMS),
        }
        out.update(values)
        # F's cosine as the identity term computes it (Eq. 1 is 1 - cosine).
        similarity = lambda c: 1.0 - L.identity_loss(c.identity_render[0], ctx.identity_target[0])
        out["id_similarity"] = similarity(ctx)
        if mean_agt is not None:
            mean = jnp.broadcast_to(mean_agt, albedo_true.shape[:1] + mean_agt.shape[-3:])
            out["albedo_psnr_mean_baseline"] = jnp.mean(metrics.albedo_psnr(mean, albedo_true,
                                                                            face_mask))
            out["id_similarity_mean_albedo"] = similarity(self._outputs(state, batch, mean))
        return out

    def _batch(self):
        return held_out_batch(self.held)

    def id_similarity(self, state, albedo=None) -> float:
        """`eval/id_similarity` of a state, with `albedo` (N, Ta, Ta, 3) float32
        in [0, 1], one map per held-out identity, in place of G_Ab's when given
        (everything else as evaluated): what F makes of a render with any
        albedo (face3d_eval.albedo_probe)."""
        if not self.enabled:
            raise ValueError("the evaluation is off (no teacher world or eval.identities = 0)")
        return float(self._similarity(state, self._batch(), albedo))

    def _similarity_fn(self, state, batch, albedo):
        ctx = self._outputs(state, batch, albedo)
        return 1.0 - L.identity_loss(ctx.identity_render[0], ctx.identity_target[0])

    def evaluate(self, state) -> dict[str, float]:
        """{"eval/<metric>": float} for a train state (empty when disabled)."""
        if not self.enabled:
            return {}
        out = self._eval(state, self._batch(), jnp.asarray(self.held.neutral),
                         jnp.asarray(self.held.albedo), jnp.asarray(self.face_mask),
                         self.now_mask,
                         None if self.mean_albedo is None else jnp.asarray(self.mean_albedo))
        return {f"eval/{k}": float(v) for k, v in jax.device_get(out).items()}

    def images(self, state, count: int = 4) -> dict[str, np.ndarray]:
        """Image grids for TensorBoard: targets, renders, albedo (A_AbGAN, EMA),
        normals of the detailed mesh, of the first `count` held-out identities."""
        if not self.enabled:
            return {}
        batch = {k: v[:count] for k, v in self._batch().items()}
        out = jax.device_get(self._images(state, batch))
        return {k: np.clip(np.asarray(v), 0.0, 1.0) for k, v in out.items()}

    def _image_grids(self, state, batch):
        ctx = self._outputs(state, batch)
        r = ctx.render
        return dict(target=batch["crop"], render=r.image, albedo=ctx.albedo,
                    albedo_truth=batch["albedo"], normals=(r.normals * 0.5 + 0.5) * r.mask)
