"""Metrics that compare a model's outputs with a known truth: mesh errors
after alignment, NoW's face region, PSNR of UV albedos. Pure functions of
arrays (jit-able, float32); the trainer's evaluation and the scripts of eval/
call them.

    mm = mesh_error_mm(neutral_vertices(model, codes["shape"]), truth_neutral, scale=True)
    db = albedo_psnr(pred_albedo, true_albedo, face_uv_mask(model, true_albedo.shape[1]))

  - `rigid_align` / `mesh_error_mm`: mean per-vertex distance (mm) of two
    meshes after the best rotation, translation and, with `scale=True`, one
    uniform scale (Kabsch / Umeyama). The trainer's `shape_error_mm` uses the
    scale, as the NoW benchmark aligns predictions "rotation, translation and
    scaling": E_shape sees DECA's crop, which is cut to the landmarks' size, so
    absolute head size is not in its input (and in the procedural FLAME the
    first shape component is mostly a uniform scale). `shape_error_metric_mm`
    (no scale) counts a wrong head size as error, as metric benchmarks do.
  - `now_face_mask`: NoW's face crop of a ground-truth mesh; with
    `mesh_error_mm(..., mask=)` the trainer's `shape_error_now_mm` scores
    only the face, as NoW does, where the whole-head figures also count the
    scalp, the back of the head, the ears and the neck, which no image of the
    face shows.
  - `neutral_vertices`: the FLAME mesh of shape coefficients alone (zero
    expression and pose), what the shape error is measured on, so that
    expression and pose do not leak into it.
  - `face_uv_mask` / `albedo_psnr`: PSNR (peak 1) of a UV albedo over the
    face's texels (see `face_uv_mask` for the region).
  - `identity_statistics`: how well embeddings tell identities apart
    (same- and different-identity cosines, rank-1 identification).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.flame import FlameModel, flame_forward, vertex_normals
from face3d_jax.flame.geometry import barycentric_points
from face3d_jax.flame.uv import bake_uv, face_regions

# The face region of `face_uv_mask`, in units of the template's eye-to-mouth
# distance d and outer-eye-corner half distance (see its docstring).
_FOREHEAD_ABOVE_BROWS = 0.3   # x d above the highest brow landmark
_CHIN_BELOW_MOUTH = 0.65      # x d below the mouth line
_HALF_WIDTH = 1.45            # x the outer eye corners' half distance
_SUPERELLIPSE_POWER = 2.5     # squarer than an ellipse: keeps jaw and temples
_MIN_FRONT_COSINE = 0.25      # normals turned more than ~75 degrees from +z are out
_PSNR_MSE_FLOOR = 1e-12       # a perfect match reads 120 dB, not inf
# NoW's 7 annotated points in iBUG-68 numbering, NoW's order (`now_face_mask`).
NOW_LANDMARKS = (36, 39, 42, 45, 33, 48, 54)
_FIRST_STATIC_LANDMARK = 17   # the static embedding holds iBUG 17..67


def _check_meshes(name: str, a, b):
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape != b.shape:
        raise ValueError(f"{name}: meshes have shapes {a.shape} and {b.shape}, expected two "
                         "(B, V, 3)")


def rigid_align(source, target, scale: bool = False, mask=None):
    """Rotates, translates and optionally scales `source` onto `target`
    (Kabsch; with scale, Umeyama 1991; least squares).

    The rotation is proper (det +1: a reflection is never used).

    Args:
      source: (B, V, 3) float32 points, e.g. a predicted mesh (metres).
      target: (B, V, 3) float32 points in correspondence with `source`.
      scale: also fit one uniform scale c > 0 per mesh (else c = 1).
      mask: optional (B, V) bool: only these points are fitted (e.g.
        `now_face_mask`); all points are moved.
    Returns:
      (B, V, 3) float32: c R source_i + t minimising
      sum_{i in mask} |c R source_i + t - target_i|^2.
    """
    source = jnp.asarray(source, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    _check_meshes("rigid_align", source, target)
    w = _point_weights("rigid_align", source, mask)
    count = jnp.sum(w, axis=1, keepdims=True)  # (B, 1, 1)
    mu_s = jnp.sum(w * source, axis=1, keepdims=True) / count
    mu_t = jnp.sum(w * target, axis=1, keepdims=True) / count
    xs, xt = source - mu_s, target - mu_t
    cov = jnp.einsum("bvi,bvj->bij", w * xs, xt)  # (B, 3, 3)
    u, sv, vt = jnp.linalg.svd(cov)
    # Flip the weakest axis where U V^T would be a reflection.
    d = jnp.sign(jnp.linalg.det(jnp.einsum("bij,bjk->bik", u, vt)))
    d = jnp.where(d == 0, 1.0, d)
    flip = jnp.stack([jnp.ones_like(d), jnp.ones_like(d), d], axis=-1)
    rot = jnp.einsum("bji,bj,bkj->bik", vt, flip, u)  # R = V diag(1, 1, d) U^T
    c = 1.0
    if scale:
        # Umeyama's c = tr(D S) / var(source); a degenerate source keeps c = 1.
        var = jnp.sum(w * xs * xs, axis=(1, 2))
        c = jnp.where(var > 0, jnp.sum(sv * flip, axis=-1) / jnp.where(var > 0, var, 1.0),
                      1.0)[:, None, None]
    return c * jnp.einsum("bij,bvj->bvi", rot, xs) + mu_t


def _point_weights(name: str, points, mask):
    """(B, V, 1) float32 0/1 weights of a (B, V) bool mask (all ones if None)."""
    if mask is None:
        return jnp.ones(points.shape[:2] + (1,), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != points.shape[:2]:
        raise ValueError(f"{name}: mask has shape {mask.shape}, expected {points.shape[:2]} "
                         "(B, V)")
    return mask.astype(jnp.float32)[..., None]


def mesh_error_mm(pred, truth, scale: bool = False, mask=None):
    """Mean per-vertex distance after `rigid_align` of pred onto truth.

    Args:
      pred: (B, V, 3) float32 metres; truth: (B, V, 3) float32 metres.
      scale: align with a uniform scale too (NoW's protocol).
      mask: optional (B, V) bool: align on and average over these vertices
        only (`now_face_mask` gives NoW's face region); each row needs at
        least three non-collinear vertices.
    Returns:
      (B,) float32 millimetres.
    """
    truth = jnp.asarray(truth, jnp.float32)
    aligned = rigid_align(pred, truth, scale, mask)
    dist = jnp.linalg.norm(aligned - truth, axis=-1)
    if mask is None:
        return 1000.0 * jnp.mean(dist, axis=1)
    w = _point_weights("mesh_error_mm", truth, mask)[..., 0]
    return 1000.0 * jnp.sum(w * dist, axis=1) / jnp.sum(w, axis=1)


def _check_model_vertices(name: str, model: FlameModel, vertices):
    if vertices.ndim != 3 or vertices.shape[1:] != (model.num_vertices, 3):
        raise ValueError(f"{name}: vertices have shape {vertices.shape}, expected "
                         f"(B, {model.num_vertices}, 3)")


def now_face_mask(model: FlameModel, vertices):
    """NoW's face region of meshes: the vertices within a sphere around the
    face's centre, as the NoW benchmark crops its ground-truth scans
    (now_evaluation, `scan2mesh_computations.compute_mask`).

    From 7 landmarks on the mesh (iBUG 36, 39, 42, 45: the eye corners,
    outer, inner, inner, outer; 33: the nose bottom; 48, 54: the mouth
    corners; `NOW_LANDMARKS`), placed with the model's static landmark
    embedding: centre = nose bottom + 0.3 (nose bridge - nose bottom), the
    bridge halfway between the inner eye corners; radius = 1.4 x (outer eye
    corners' distance + bridge-to-nose-bottom distance) / 2. NoW then aligns
    the prediction to the cropped scan (7-landmark Procrustes refined by
    scan-to-mesh rigid ICP with scale) and scores scan-to-mesh distances. With
    meshes in correspondence the per-vertex distance over the crop, aligned on
    the crop (`mesh_error_mm(..., scale=True, mask=...)`), stands in for both:
    it is never below the scan-to-mesh distance of the same alignment.

    Args:
      model: the FLAME-format model (its static landmark embedding).
      vertices: (B, V, 3) float32 metres, the ground-truth meshes.
    Returns:
      (B, V) bool.
    """
    vertices = jnp.asarray(vertices, jnp.float32)
    _check_model_vertices("now_face_mask", model, vertices)
    lmk = now_landmarks(model, vertices)
    outer_r, inner_r, inner_l, outer_l, nose_bottom = (lmk[:, i] for i in range(5))
    bridge = 0.5 * (inner_r + inner_l)
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * 0.5 * (jnp.linalg.norm(outer_r - outer_l, axis=-1)
                          + jnp.linalg.norm(bridge - nose_bottom, axis=-1))
    return jnp.linalg.norm(vertices - centre[:, None], axis=-1) <= radius[:, None]


def now_landmarks(model: FlameModel, vertices):
    """NoW's 7 points on FLAME meshes (`NOW_LANDMARKS`, NoW's order: right
    eye outer and inner corner, left eye inner and outer corner, nose
    bottom, right and left mouth corner), placed with the model's static
    landmark embedding, as DECA's NoW predictions place them.

    Args:
      model: the FLAME-format model.
      vertices: (B, V, 3) float32.
    Returns:
      (B, 7, 3) float32, the vertices' unit.
    """
    vertices = jnp.asarray(vertices, jnp.float32)
    _check_model_vertices("now_landmarks", model, vertices)
    rows = np.asarray(NOW_LANDMARKS) - _FIRST_STATIC_LANDMARK
    return barycentric_points(vertices, model.faces, jnp.asarray(model.static_lmk_faces_idx)[rows],
                              jnp.asarray(model.static_lmk_bary_coords)[rows])


def neutral_vertices(model: FlameModel, shape):
    """The FLAME mesh of identity coefficients alone.

    Args:
      model: the FLAME-format model.
      shape: (B, S) float32 shape coefficients, S <= model.num_shape (the
        missing ones are zero: FLAME's first S components are used).
    Returns:
      (B, V, 3) float32 metres, zero expression, pose, jaw and eyes.
    """
    shape = jnp.asarray(shape, jnp.float32)
    if shape.ndim != 2 or shape.shape[1] > model.num_shape:
        raise ValueError(f"neutral_vertices: shape has shape {shape.shape}, expected (B, S) "
                         f"with S <= {model.num_shape}")
    batch = shape.shape[0]
    zeros = lambda n: jnp.zeros((batch, n), jnp.float32)  # noqa: E731
    # One expression column: zero either way, and no (V*3, E) product to pay.
    return flame_forward(model, shape, zeros(1), zeros(3), zeros(3), zeros(3),
                         zeros(6)).vertices


def face_uv_mask(model: FlameModel, size: int) -> np.ndarray:
    """The UV texels of the face: forehead, eye region, nose, cheeks, mouth, chin.

    Built from the template's geometry, so it fits any FLAME-format UV layout
    (the procedural default's and FLAME's own): each texel's template point
    p (`flame.uv.bake_uv`, the texel convention of the teacher's and of the
    renderer's UV maps: row 0 at v = 1) is in the face when
      - a UV triangle covers it and it is not on an eyeball (skinning weight
        of the eye joints < 0.5: the eyelids and sockets stay in);
      - its template normal is within ~75 degrees of the view axis +z (the
        under-chin, the sides of the head and the scalp's crown are out);
      - (x, y) lies inside a superellipse (power 2.5) in the frontal plane,
        centred on the nose's midline, half-width 1.45 x half the distance of
        the outer eye corners (stops before the ears), from 0.3 d above the
        highest brow landmark (below the teacher's hairline) down to 0.65 d
        below the mouth line (the chin), d the eye-to-mouth line distance;
        its upper and lower halves meet at the eye line.
    The landmarks are the model's static 51 (iBUG 17..67, `face_regions`).
    For the procedural default at 256 it keeps about a quarter of the square.

    Args:
      model: the FLAME-format model (needs its UV layout).
      size: the UV map's side T.
    Returns:
      (T, T) bool numpy array (a constant: built on the host once).
    """
    if model.uv_coords is None or model.uv_faces is None:
        raise ValueError("face_uv_mask: the model has no UV layout")
    if size < 1:
        raise ValueError(f"face_uv_mask: size must be at least 1, got {size}")
    bake = bake_uv(model, size)
    lmk = np.asarray(face_regions(model).landmarks, np.float64)  # (51, 3), iBUG i at i - 17
    ibug = lambda first, stop: lmk[first - 17:stop - 17]  # noqa: E731
    eye_y = ibug(36, 48)[:, 1].mean()
    mouth_y = ibug(48, 60)[:, 1].mean()
    d = eye_y - mouth_y
    centre_x = ibug(27, 31)[:, 0].mean()
    top = ibug(17, 27)[:, 1].max() + _FOREHEAD_ABOVE_BROWS * d
    bottom = mouth_y - _CHIN_BELOW_MOUTH * d
    half_width = _HALF_WIDTH * 0.5 * abs(lmk[45 - 17, 0] - lmk[36 - 17, 0])

    template = np.asarray(model.v_template, np.float32)
    normals = np.asarray(vertex_normals(jnp.asarray(template)[None],
                                        jnp.asarray(model.faces, jnp.int32)))[0]
    corners = np.asarray(model.faces, np.int64)[np.asarray(bake.tri)]  # (T, T, 3)
    normal = np.einsum("hwk,hwkc->hwc", np.asarray(bake.bary, np.float64), normals[corners])
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)

    p = np.asarray(bake.position, np.float64)
    dx = np.abs(p[..., 0] - centre_x) / half_width
    dy = np.where(p[..., 1] >= eye_y, (p[..., 1] - eye_y) / (top - eye_y),
                  (eye_y - p[..., 1]) / (eye_y - bottom))
    inside = np.abs(dx) ** _SUPERELLIPSE_POWER + np.abs(dy) ** _SUPERELLIPSE_POWER <= 1.0
    return ((np.asarray(bake.covered) > 0) & (np.asarray(bake.eye) < 0.5) & inside
            & (normal[..., 2] > _MIN_FRONT_COSINE))


def albedo_psnr(pred, truth, mask):
    """PSNR (peak 1) of UV albedos over a texel mask.

    A `pred` of another size is first resized to truth's with
    `jax.image.resize(..., "linear")`: bilinear with half-texel centres (both
    maps cover the same UV square), antialiased (a triangle filter widened by
    the scale) when it shrinks. Values are not clipped.

    Args:
      pred: (B, Tp, Tp, 3) float32 in [0, 1], row 0 at v = 1.
      truth: (B, T, T, 3) float32 in [0, 1], the same layout.
      mask: (T, T) bool (e.g. `face_uv_mask(model, T)`).
    Returns:
      (B,) float32 dB: 10 log10(1 / MSE), the MSE over the masked texels and
      the channels (floored at 1e-12, so at most 120 dB; NaN for an empty mask).
    """
    pred = jnp.asarray(pred, jnp.float32)
    truth = jnp.asarray(truth, jnp.float32)
    mask = jnp.asarray(mask)
    if pred.ndim != 4 or truth.ndim != 4 or pred.shape[0] != truth.shape[0] \
            or pred.shape[-1] != truth.shape[-1]:
        raise ValueError(f"albedo_psnr: pred {pred.shape} and truth {truth.shape} are not two "
                         "(B, T, T, C) batches of the same B and C")
    if mask.shape != truth.shape[1:3]:
        raise ValueError(f"albedo_psnr: mask has shape {mask.shape}, expected {truth.shape[1:3]}")
    if pred.shape != truth.shape:
        pred = jax.image.resize(pred, truth.shape, method="linear")
    weight = mask.astype(jnp.float32)[None, ..., None]
    count = jnp.sum(weight) * truth.shape[-1]
    mse = jnp.sum(weight * (pred - truth) ** 2, axis=(1, 2, 3)) / count
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, _PSNR_MSE_FLOOR))


def identity_statistics(embeddings, labels) -> dict[str, float]:
    """How well embeddings tell identities apart, by cosine similarity.

    Args:
      embeddings: (N, D) float, one per image (any scale: each is normalised).
      labels: (N,) int identity of each image; at least 2 identities, each
        seen at least twice.
    Returns:
      dict of floats: same_mean, same_p10 (the mean and 10th percentile of
      the cosine over pairs of images of one identity), different_mean,
      different_p90 (over pairs of different identities), gap (same_mean -
      different_mean) and rank1, the fraction of images whose most similar
      other image shows the same identity (rank-1 identification with every
      other image as the gallery).
    """
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"identity_statistics: embeddings {x.shape} and labels "
                         f"{labels.shape} are not (N, D) and (N,)")
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        raise ValueError("identity_statistics: needs at least 2 identities, each seen at "
                         f"least twice (got {len(counts)}, the rarest {counts.min()} times)")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cos = x @ x.T
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    same_pairs, different_pairs = cos[same & off_diagonal], cos[~same]
    nearest = np.argmax(np.where(off_diagonal, cos, -np.inf), axis=1)
    return dict(same_mean=float(same_pairs.mean()),
                same_p10=float(np.percentile(same_pairs, 10)),
                different_mean=float(different_pairs.mean()),
                different_p90=float(np.percentile(different_pairs, 90)),
                gap=float(same_pairs.mean() - different_pairs.mean()),
                rank1=float(np.mean(labels[nearest] == labels)))
