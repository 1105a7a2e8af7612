"""REALY's region-aware protocol (Chai et al., "REALY: Rethinking the Evaluation
of 3D Face Reconstruction", ECCV 2022), the benchmark of the paper's Table 2.

`face3d eval realy` scores a folder of predicted meshes `<id>[_<name>].obj`
(all in one template topology, e.g. FLAME's) against REALY's scans:

  <realy>/REALY_HIFI3D_keypoints/<id>.obj          85 keypoints of the scan
  <realy>/REALY_scan_region/<id>/{nose,mouth,forehead,cheek}.obj
  <realy>/metrical_scale.txt                       one factor per subject id (ids from 1)

with the template files REALY ships per topology (e.g. its data/FLAME.obj and
data/FLAME.txt: the template mesh and 85 barycentric keypoints on it), given by
path: nothing of REALY ships here or is downloaded.

Per prediction:
  1. gICP (`global_align`): the similarity taking the prediction's 7 keypoints
     (eye corners, nose bottom, mouth corners) onto the scan's;
  2. rICP (`region_align`), per region: from the gICP pose, rigid ICP of the
     prediction's surface onto the scan region's vertices, with the region's
     keypoint pairs weighted as int(N / k) points (N scan vertices, k pairs;
     a quarter of that for the cheek), at most 100 iterations;
  3. the bidirectional step (`bidirectional_error`): every scan vertex gets its
     nearest point on the aligned prediction; the scan region is deformed
     towards those points by non-rigid ICP (`nicp`: a per-vertex affine field
     with a stiffness term, Amberg et al. 2007, with REALY's schedule and
     keypoint terms), the deformed vertices get new nearest points on the
     prediction, and the error is the mean distance from the original scan
     vertices to those points, times the subject's metrical scale.
  4. `evaluate` writes REALY_error.txt (REALY's own layout: name, an empty
     field, the four errors, tab-separated) and realy.json; the summary
     (average, median, std with n-1 per region, and @all = the mean of the four
     averages) is what REALY's main.py prints.

Where this can differ from the official code (czh-98/REALY):
  - the NICP solve: REALY factors the normal equations A^T A with CHOLMOD
    (`cholesky_AAt`, scikit-sparse); here the same normal equations are
    assembled directly (stiffness alpha^2 (L kron G^2), 4x4 blocks of the data
    and keypoint rows) and solved by SuperLU (scipy.sparse.linalg.splu): the
    same least-squares solution up to rounding. Everything is float64, where
    REALY rounds meshes and its data matrix to float32.
  - nearest points on a surface come from `face3d_jax.mesh_distance` (exact,
    as trimesh's `nearest.on_surface`). The prediction's index is built once
    per prediction and each transform is applied to the query points by its
    inverse (distances and nearest points are equivariant under similarities),
    where REALY moves the mesh and rebuilds trimesh's tree every iteration.
  - the Procrustes rotation is kept proper (a reflection is flipped), where
    REALY's SVD can return one; that only happens on degenerate keypoints.
  - the keypoint-free NICP (the cheek) stops a stage after `NicpParams.
    max_steps_free` solves; REALY's loop has no cap.
  - REALY writes the errors truncated to 9 characters; here with 6 decimals.
    The aligned, deformed and colour-mapped meshes REALY saves are not written.
  - a prediction REALY would crash on (a wrong vertex count, a missing scan) is
    logged in one line and skipped; the count is in the result.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

from face3d_eval.now import Similarity
from face3d_jax.mesh_distance import SurfaceIndex

log = logging.getLogger(__name__)

REGIONS = ("nose", "mouth", "forehead", "cheek")
NUM_KEYPOINTS = 85
SEVEN_KEYPOINTS = (36, 39, 42, 45, 33, 48, 54)  # eye corners, nose bottom, mouth corners
_EYES_BROWS = tuple(range(36, 48)) + tuple(range(17, 27))
_MOUTH = tuple(range(48, 61)) + (64,)
# Keypoint pairs of rICP (REALY's "nose_part" for the nose).
RIGID_KEYPOINTS = {
    "nose": (27, 28, 29, 30, 31, 35, 32, 33, 34, 70, 71),
    "mouth": _MOUTH,
    "forehead": _EYES_BROWS,
    "cheek": _MOUTH + (76, 77, 36, 41, 40, 39, 42, 47, 46, 45, 7, 8, 9),
}
# Keypoint pairs of the NICP (none for the cheek).
NICP_KEYPOINTS = {"nose": tuple(range(27, 36)), "mouth": _MOUTH, "forehead": _EYES_BROWS,
                  "cheek": ()}
RICP_MAX_ITER = 100
RICP_TOL = 1e-6  # change of rICP's mean squared residual that ends it (REALY's)


@dataclass(frozen=True)
class NicpParams:
    """REALY's non-rigid ICP settings (utils/eval.py, utils/NICP.py)."""

    epsilon: float = 1.0  # a stage ends when ||X - X_prev|| <= epsilon (halved per stage)
    gamma: float = 1.0  # stiffness weight of the affine's translation column
    alpha: float = 50.0  # stiffness, decayed by exp(-0.5) per stage
    alpha_keypoints: float = 150.0  # stiffness of the first, keypoint-only stage
    keypoint_weight: float = 50.0  # then kp_w * exp(-0.9 * solves so far) / 10
    max_steps: int = 11  # solves per stage with keypoints (REALY's "step > 10")
    max_steps_free: int = 200  # solves per stage without keypoints (REALY: no cap)


@dataclass(frozen=True)
class KeypointSpec:
    """Barycentric keypoints of a template: point k is
    b[k] @ vertices[faces[face[k]]]. face (85,) int64; bary (85, 3) float64."""

    face: np.ndarray
    bary: np.ndarray


# ---------------------------------------------------------------- reading files

def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    """An OBJ's ((V, 3) float64 vertices, (F, 3) int64 0-based faces), in file
    order; polygons are fanned (a quad a b c d gives a b c and a c d, as
    REALY's reader). Faces may be absent (F = 0)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such OBJ file")
    verts, faces = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for num, line in enumerate(fh, 1):
            tok = line.split()
            try:
                if tok and tok[0] == "v":
                    verts.append([float(x) for x in tok[1:4]])
                elif tok and tok[0] == "f":
                    idx = [int(t.split("/")[0]) for t in tok[1:]]
                    idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                    faces += [[idx[0], idx[j], idx[j + 1]] for j in range(1, len(idx) - 1)]
            except ValueError:
                raise ValueError(f"{path}:{num}: expected 'v x y z' or 'f i j k', found "
                                 f"{line.strip()[:60]!r}") from None
    v = np.asarray(verts, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    if not len(v):
        raise ValueError(f"{path}: no vertices, expected an OBJ mesh")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"{path}: faces index vertices {f.min() + 1}..{f.max() + 1}, the file "
                         f"has {len(v)}")
    return v, f


def read_template_keypoints(path) -> KeypointSpec:
    """REALY's keypoint file of a topology (e.g. data/FLAME.txt): a JSON list of
    85 [triangle index (0-based, into the template OBJ's faces), b1, b2]; the
    weights of the triangle's three corners are (b1, b2, 1 - b1 - b2)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such keypoint file (REALY's <topology>.txt)")
    try:
        arr = np.asarray(json.loads(path.read_text()), np.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON list of {NUM_KEYPOINTS} [triangle, b1, b2] "
                         f"(REALY's keypoint format), found unreadable text ({exc})") from None
    if arr.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"{path}: expected {NUM_KEYPOINTS} [triangle, b1, b2] rows "
                         f"(REALY's keypoint format), found shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 0] != np.round(arr[:, 0])) \
            or arr[:, 0].min() < 0:
        raise ValueError(f"{path}: triangle indices must be integers >= 0 and weights finite")
    b1, b2 = arr[:, 1], arr[:, 2]
    return KeypointSpec(arr[:, 0].astype(np.int64), np.stack([b1, b2, 1.0 - b1 - b2], 1))


def keypoints_on_mesh(vertices, faces, spec: KeypointSpec) -> np.ndarray:
    """The 85 keypoints of a mesh in the template's topology.

    vertices (V, 3) float, faces (F, 3) int: the template's triangles, in its
    OBJ's order. Returns (85, 3) float64."""
    faces = np.asarray(faces)
    if spec.face.max() >= len(faces):
        raise ValueError(f"keypoints name triangle {spec.face.max()}, expected one below "
                         f"{len(faces)} (the template's triangles): a keypoint file of another "
                         "topology?")
    corners = np.asarray(vertices, np.float64)[faces[spec.face]]  # (85, 3, 3)
    return np.einsum("kc,kcx->kx", spec.bary, corners)


def read_scale(path) -> np.ndarray:
    """REALY's metrical_scale.txt: (S,) float64, entry i for subject id i + 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrical scale file (REALY's "
                                "metrical_scale.txt)")
    try:
        scale = np.loadtxt(path, ndmin=1, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: expected one number per line, found ({exc})") from None
    if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"{path}: expected one positive number per line, found shape "
                         f"{scale.shape}")
    return scale


def read_face_mask(path, num_vertices: int) -> np.ndarray:
    """REALY's optional template mask (comma- or line-separated 0/1 per vertex):
    (V,) bool."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vertex mask file")
    mask = np.loadtxt(path, delimiter=",", ndmin=1).reshape(-1)
    if mask.shape != (num_vertices,) or not np.all(np.isin(mask, (0, 1))):
        raise ValueError(f"{path}: expected {num_vertices} values 0/1 (one per template vertex), "
                         f"found {mask.size}")
    return mask.astype(bool)


# ---------------------------------------------------------------- rigid alignment

def fit_similarity(source, target, weights=None, *, with_scale: bool) -> Similarity:
    """REALY's `fit_icp_RT`: the rotation of weighted orthogonal Procrustes, the
    scale as the ratio of the L1 norms of the centred target and rotated
    centred source (not Umeyama's), the translation matching the weighted means.

    source, target: (n, 3) float; weights (n,) float >= 0 (None: all 1;
    an integer weight acts as that many copies of the pair)."""
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64)
    ms, mt = w @ s / w.sum(), w @ t / w.sum()
    s0, t0 = s - ms, t - mt
    u, _, vt = np.linalg.svd((t0 * w[:, None]).T @ s0)
    if np.linalg.det(u @ vt) < 0:  # keep a rotation (see the module docstring)
        u[:, -1] *= -1
    rot = u @ vt
    scale = float(w @ np.abs(t0).sum(1) / (w @ np.abs(s0 @ rot.T).sum(1))) if with_scale else 1.0
    return Similarity(scale, rot, mt - scale * ms @ rot.T)


def global_align(pred_keypoints, scan_keypoints) -> Similarity:
    """gICP: the similarity taking the prediction's 7 keypoints onto the scan's.
    pred_keypoints, scan_keypoints: (85, 3) float."""
    idx = list(SEVEN_KEYPOINTS)
    return fit_similarity(np.asarray(pred_keypoints)[idx], np.asarray(scan_keypoints)[idx],
                          with_scale=True)


def _inverse(t: Similarity, points) -> np.ndarray:
    return (np.asarray(points, np.float64) - t.translation) @ t.rotation / t.scale


def nearest_on(index: SurfaceIndex, transform: Similarity, points) -> np.ndarray:
    """Nearest points (N, 3) float64 of the surface transform(index's mesh) to
    points (N, 3), with the index built once for the untransformed mesh."""
    return transform(index.query(_inverse(transform, points))[1])


def region_align(index: SurfaceIndex, scan_points, pred_keypoints, scan_keypoints,
                 keypoint_weight: float, *, max_iter: int = RICP_MAX_ITER,
                 tol: float = RICP_TOL) -> tuple[Similarity, int]:
    """rICP: rigid ICP (no scale, as REALY) of the prediction onto a scan region.

    Each iteration pairs every scan point with its nearest point on the moved
    prediction, adds the keypoint pairs with weight `keypoint_weight`, and
    fits the rigid motion; it stops when the weighted mean squared residual
    after the fit changes by less than tol, or after max_iter motions. As in
    REALY, the last fitted motion is not applied.

    Args:
      index: the gICP-aligned prediction's surface.
      scan_points: (N, 3) float, the region's vertices.
      pred_keypoints, scan_keypoints: (k, 3) float, the region's pairs, the
        prediction's in the index's frame.
      keypoint_weight: int(N / k) in REALY (a quarter of it for the cheek).
    Returns:
      (the rigid motion of the prediction, the motions applied).
    """
    scan = np.asarray(scan_points, np.float64)
    kp_scan = np.asarray(scan_keypoints, np.float64)
    target = np.concatenate([scan, kp_scan])
    w = np.concatenate([np.ones(len(scan)), np.full(len(kp_scan), float(keypoint_weight))])
    motion = Similarity(1.0, np.eye(3), np.zeros(3))
    previous, applied = 0.0, 0
    while True:
        source = np.concatenate([nearest_on(index, motion, scan), motion(pred_keypoints)])
        step = fit_similarity(source, target, w, with_scale=False)
        error = float(w @ np.sum((step(source) - target) ** 2, 1) / w.sum())
        if abs(error - previous) < tol or applied >= max_iter:
            return motion, applied
        previous, motion, applied = error, motion.then(step), applied + 1


# ---------------------------------------------------------------- non-rigid ICP

def clean_scan_region(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """What trimesh's process=True does to REALY's scan region before its
    bidirectional step: vertices no face uses are dropped and vertices equal to
    8 decimals merged (the first kept, order kept). (V, 3), (F, 3) ->
    (V', 3) float64, (F, 3) int64."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    used = np.unique(f)
    key = np.round(v[used] * 1e8).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # new ids in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    remap = np.full(len(v), -1, np.int64)
    remap[used] = rank[inverse.reshape(-1)]
    return v[used[np.sort(first)]], remap[f]


def mesh_laplacian(faces, num_vertices: int) -> sp.csr_matrix:
    """M^T M for the edge-vertex incidence M (one +1/-1 row per undirected edge):
    the graph Laplacian, (V, V) float64."""
    f = np.asarray(faces, np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [0, 2]]]), axis=1)
    e = np.unique(e, axis=0)
    e = e[e[:, 0] != e[:, 1]]
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices,) * 2)
    adj = (adj + adj.T).tocsr()
    return (sp.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()


def affine_step(vertices, laplacian, stiffness, alpha: float, rows) -> np.ndarray:
    """One NICP solve: the per-vertex affine maps X (4N, 3) (vertex i moves to
    [v_i, 1] @ X[4i:4i+4]) minimising
        alpha^2 sum_edges ||G (X_i - X_j)||^2 + sum_rows w^2 ||[v_i, 1] X_i - y||^2,
    by the normal equations (what REALY hands CHOLMOD), with SuperLU.

    Args:
      vertices: (N, 3) float, the current source.
      laplacian: (N, N) sparse, `mesh_laplacian`.
      stiffness: (4,) float, the diagonal of G.
      rows: iterable of (index (m,) int, weight (m,) float, target (m, 3)).
    Returns:
      (4N, 3) float64 X.
    """
    n = len(vertices)
    h = np.concatenate([np.asarray(vertices, np.float64), np.ones((n, 1))], axis=1)
    blocks, rhs = np.zeros((n, 4, 4)), np.zeros((n, 4, 3))
    for idx, w, y in rows:
        w2 = np.asarray(w, np.float64) ** 2
        np.add.at(blocks, idx, w2[:, None, None] * h[idx, :, None] * h[idx, None, :])
        np.add.at(rhs, idx, w2[:, None, None] * h[idx, :, None] * np.asarray(y)[:, None, :])
    r = (4 * np.arange(n)[:, None, None] + np.arange(4)[None, :, None]).repeat(4, 2)
    data = sp.coo_matrix((blocks.ravel(), (r.ravel(), r.transpose(0, 2, 1).ravel())),
                         shape=(4 * n, 4 * n))
    g2 = sp.diags(np.asarray(stiffness, np.float64) ** 2)
    normal = (alpha**2 * sp.kron(laplacian, g2) + data).tocsc()
    try:
        return spla.splu(normal, permc_spec="MMD_AT_PLUS_A").solve(rhs.reshape(4 * n, 3))
    except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
        raise ValueError(f"NICP: the scan region's system is singular ({exc}): is the region "
                         "flat or without faces?") from None


def _apply_affine(vertices, x) -> np.ndarray:
    h = np.concatenate([vertices, np.ones((len(vertices), 1))], axis=1)
    return np.einsum("na,nax->nx", h, x.reshape(-1, 4, 3))


def nicp(source, faces, targets, keypoint_index=None, keypoint_targets=None,
         params: NicpParams = NicpParams()) -> np.ndarray:
    """REALY's non-rigid ICP: deform `source` towards the point set `targets`.

    Each solve pairs every source vertex with its nearest target (pairs farther
    than max(2 x their mean, 1) are dropped) and calls `affine_step`. Stages
    of decreasing stiffness end when successive solutions differ by at most
    epsilon (halved per stage). With keypoints: a first keypoint-only stage of
    one solve (stiffness alpha_keypoints, G = diag(2, 2, 3, 2 gamma)), then
    three stages with G = diag(1, 1, 1, gamma) whose keypoint weight decays.

    Args:
      source: (N, 3) float, the scan region; faces (F, 3) int into it.
      targets: (M, 3) float, the points to deform towards.
      keypoint_index: (k,) int source vertices with keypoint_targets (k, 3);
        a repeated index keeps its last target (REALY's assignment).
    Returns:
      (N, 3) float64 deformed source.
    """
    cur = np.asarray(source, np.float64)
    tree = cKDTree(np.asarray(targets, np.float64))
    lap = mesh_laplacian(faces, len(cur))
    g = (1.0, 1.0, 1.0, params.gamma)
    stages = [(params.alpha * math.exp(-0.5 * d), params.epsilon * 0.5**d, g)
              for d in range(3)]
    kp = None
    if keypoint_index is not None and len(keypoint_index):
        # Last assignment wins for a repeated index, as in numpy's fancy assignment.
        kp_idx, last = np.unique(np.asarray(keypoint_index)[::-1], return_index=True)
        kp = (kp_idx, np.asarray(keypoint_targets, np.float64)[::-1][last])
        stages = [(params.alpha_keypoints, 2 * params.epsilon,
                   (2.0, 2.0, 3.0, 2 * params.gamma))] + stages
    # REALY starts from X = 1 and X_prev = 0, so each stage's test compares
    # successive solutions, the first with the all-ones X.
    x_prev = np.ones((4 * len(cur), 3))
    delta, solves = math.sqrt(x_prev.size), 0
    for stage, (alpha, eps, stiffness) in enumerate(stages):
        keypoint_only = kp is not None and stage == 0
        if keypoint_only:
            limit = 1
        else:
            limit = params.max_steps if kp is not None else params.max_steps_free
        for _ in range(limit):
            if delta <= eps:
                break
            rows = []
            if not keypoint_only:
                dist, nn = tree.query(cur)
                keep = np.nonzero(dist < max(2 * dist.mean(), 1.0))[0]
                rows.append((keep, np.ones(len(keep)), tree.data[nn[keep]]))
            if kp is not None:
                w = params.keypoint_weight * (1.0 if keypoint_only else
                                              math.exp(-0.9 * solves) / 10)
                rows.append((kp[0], np.full(len(kp[0]), w), kp[1]))
            x = affine_step(cur, lap, stiffness, alpha, rows)
            delta = float(np.linalg.norm(x - x_prev))
            x_prev, cur = x, _apply_affine(cur, x)
            solves += 1
    return cur


# ---------------------------------------------------------------- the bidirectional step

def bidirectional_error(index: SurfaceIndex, transform: Similarity, scan_vertices, scan_faces,
                        pred_keypoints=None, scan_keypoints=None,
                        params: NicpParams = NicpParams()) -> tuple[float, np.ndarray, np.ndarray]:
    """REALY's error of one region (`bidirectional_evaluation_pipeline`).

    Args:
      index, transform: the prediction's surface is transform(index's mesh).
      scan_vertices: (N, 3) float, scan_faces (F, 3) int: the region, cleaned
        (`clean_scan_region`).
      pred_keypoints: (k, 3) float, the region's keypoints on the aligned
        prediction, and scan_keypoints (k, 3) the scan's; None for the cheek.
    Returns:
      (mean error (scan units), (N,) float64 error per scan vertex, (N, 3)
      float64 deformed scan).
    """
    scan = np.asarray(scan_vertices, np.float64)
    nearest = nearest_on(index, transform, scan)
    kp_index = None
    if pred_keypoints is not None:
        kp_index = cKDTree(scan).query(np.asarray(scan_keypoints, np.float64))[1]
    deformed = nicp(scan, scan_faces, nearest, kp_index, pred_keypoints, params)
    err = np.linalg.norm(nearest_on(index, transform, deformed) - scan, axis=1)
    return float(err.mean()), err, deformed


def evaluate_mesh(pred_vertices, pred_faces, template_faces, spec: KeypointSpec, scan_keypoints,
                  regions: dict, *, face_mask=None, params: NicpParams = NicpParams()
                  ) -> dict[str, float]:
    """REALY's four errors of one prediction, in scan units (before the
    metrical scale).

    Args:
      pred_vertices: (V, 3) float, the template's topology; pred_faces (F, 3)
        int its triangles; template_faces (F', 3) int the template OBJ's (the
        keypoints index them).
      spec: the template's keypoints; scan_keypoints (85, 3) float the scan's.
      regions: {region: ((N, 3) float vertices, (F, 3) int faces)} as read.
      face_mask: (V,) bool or None; REALY's template mask: only triangles
        whose corners are all in it make the surface of the bidirectional
        step (rICP uses all).
    Returns:
      {region: mean error}.
    """
    scan_keypoints = np.asarray(scan_keypoints, np.float64)
    kp = keypoints_on_mesh(pred_vertices, template_faces, spec)
    gicp = global_align(kp, scan_keypoints)
    aligned, kp = gicp(pred_vertices), gicp(kp)
    pred_faces = np.asarray(pred_faces, np.int64)
    index = SurfaceIndex.build(aligned, pred_faces)
    surface = index if face_mask is None else SurfaceIndex.build(
        aligned, pred_faces[np.all(np.asarray(face_mask)[pred_faces], axis=1)])
    errors = {}
    for region in REGIONS:
        verts, faces = regions[region]
        rigid = list(RIGID_KEYPOINTS[region])
        rate = len(verts) / len(rigid) / (4 if region == "cheek" else 1)
        motion, _ = region_align(index, verts, kp[rigid], scan_keypoints[rigid], int(rate))
        clean_v, clean_f = clean_scan_region(verts, faces)
        pairs = list(NICP_KEYPOINTS[region])
        pred_kp = motion(kp[pairs]) if pairs else None
        errors[region] = bidirectional_error(surface, motion, clean_v, clean_f, pred_kp,
                                             scan_keypoints[pairs] if pairs else None, params)[0]
    return errors


# ---------------------------------------------------------------- the benchmark's folders

def _subject_id(path: Path) -> int:
    m = re.fullmatch(r"(\d+)(_.*)?", path.stem)
    if m is None:
        raise ValueError(f"{path}: expected a name <id>.obj or <id>_<anything>.obj (REALY's "
                         "subject id first)")
    return int(m.group(1))


def _read_subject(realy: Path, subject: int) -> tuple[np.ndarray, dict]:
    kp, _ = read_obj(realy / "REALY_HIFI3D_keypoints" / f"{subject}.obj")
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"{realy / 'REALY_HIFI3D_keypoints' / f'{subject}.obj'}: expected "
                         f"{NUM_KEYPOINTS} keypoint vertices, found {len(kp)}")
    regions = {}
    for region in REGIONS:
        path = realy / "REALY_scan_region" / str(subject) / f"{region}.obj"
        regions[region] = read_obj(path)
        if not len(regions[region][1]):
            raise ValueError(f"{path}: no faces, expected a scan region mesh")
    return kp, regions


def _statistics(errors: dict[str, dict[str, float]]) -> dict:
    table = np.array([[e[r] for r in REGIONS] for e in errors.values()]).reshape(-1, 4)
    n = len(table)
    std = table.std(0, ddof=1) if n > 1 else np.full(4, np.nan)
    avg = table.mean(0)
    return {"average": dict(zip(REGIONS, avg.tolist())),
            "median": dict(zip(REGIONS, np.median(table, 0).tolist())),
            "std": dict(zip(REGIONS, std.tolist())), "all": float(avg.mean())}


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def evaluate(predictions, realy_root, template_obj, template_keypoints, scale_path=None,
             out=None, *, mask=None, params: NicpParams = NicpParams(),
             progress: bool = True) -> dict:
    """REALY's main.py: every `<predictions>/<id>[_<name>].obj` scored against
    subject <id>'s scan; writes <out>/REALY_error.txt and <out>/realy.json.

    Args:
      predictions: folder of predicted meshes in the template's topology.
      realy_root: folder holding REALY_HIFI3D_keypoints/ and REALY_scan_region/.
      template_obj, template_keypoints: REALY's <topology>.obj and .txt.
      scale_path: metrical_scale.txt (default <realy_root>/metrical_scale.txt).
      out: results folder (default <predictions>/realy).
      mask: REALY's optional template vertex mask file (0/1 per vertex).
    Returns:
      {"errors": {name: {region: error (mm)}}, "summary": {"average", "median",
      "std": {region: float}, "all": float}, "num_scored", "num_skipped",
      "skipped": [one line each], "files": {"errors", "json"}}.
    """
    from tqdm import tqdm

    pred_root, realy = Path(predictions), Path(realy_root)
    if not pred_root.is_dir():
        raise FileNotFoundError(f"{pred_root}: no such predictions folder")
    for sub in ("REALY_HIFI3D_keypoints", "REALY_scan_region"):
        if not (realy / sub).is_dir():
            raise FileNotFoundError(f"{realy / sub}: no such folder (REALY's data layout)")
    template_v, template_f = read_obj(template_obj)
    if not len(template_f):
        raise ValueError(f"{template_obj}: no faces, expected REALY's template mesh")
    spec = read_template_keypoints(template_keypoints)
    if spec.face.max() >= len(template_f):
        raise ValueError(f"{template_keypoints}: names triangle {spec.face.max()}, expected one "
                         f"below {len(template_f)} (the triangles of {template_obj}): files of "
                         "different topologies?")
    scale = read_scale(scale_path if scale_path is not None else realy / "metrical_scale.txt")
    face_mask = None if mask is None else read_face_mask(mask, len(template_v))
    files = sorted(pred_root.glob("*.obj"), key=lambda p: (p.stem.split("_")[0].zfill(12), p.name))
    if not files:
        raise FileNotFoundError(f"{pred_root}: no predicted meshes (*.obj)")
    errors, skipped = {}, []
    for path in tqdm(files, desc="REALY", unit="mesh", disable=not progress):
        try:
            subject = _subject_id(path)
            if not 1 <= subject <= len(scale):
                raise ValueError(f"{path}: subject id {subject}, the metrical scale file has ids "
                                 f"1..{len(scale)}")
            verts, faces = read_obj(path)
            if len(verts) != len(template_v):
                raise ValueError(f"{path}: {len(verts)} vertices, expected {len(template_v)} "
                                 f"(the template {Path(template_obj).name}'s topology)")
            scan_kp, regions = _read_subject(realy, subject)
            err = evaluate_mesh(verts, faces if len(faces) else template_f, template_f, spec,
                                scan_kp, regions, face_mask=face_mask, params=params)
        except (OSError, ValueError) as exc:
            log.warning("skipped: %s", exc)
            skipped.append(str(exc))
            continue
        errors[path.stem] = {r: e * float(scale[subject - 1]) for r, e in err.items()}
    if not errors:
        raise ValueError(f"{pred_root}: none of {len(files)} predictions could be scored "
                         f"(first reason: {skipped[0]})")
    out_dir = Path(out) if out is not None else pred_root / "realy"
    out_dir.mkdir(parents=True, exist_ok=True)
    # REALY's layout (main.py's reader splits on tabs into 6 fields).
    lines = [f"{name}\t\t" + "\t".join(f"{e[r]:.6f}" for r in REGIONS)
             for name, e in errors.items()]
    (out_dir / "REALY_error.txt").write_text("\n".join(lines) + "\n")
    result = {"errors": errors, "summary": _statistics(errors), "num_scored": len(errors),
              "num_skipped": len(skipped), "skipped": skipped,
              "files": {"errors": str(out_dir / "REALY_error.txt"),
                        "json": str(out_dir / "realy.json")}}
    (out_dir / "realy.json").write_text(json.dumps(_json_safe(result), indent=1))
    return result


def format_summary(result: dict) -> str:
    """The lines REALY's main.py prints (average, median, std per region, @all)."""
    s = result["summary"]
    lines = [f"{label} nmse@{r} = {s[key][r]:.3f}"
             for key, label in (("average", "average"), ("median", "median"),
                                ("std", "standard deviation")) for r in REGIONS]
    return "\n".join(lines + [f"average nmse@all = {s['all']:.3f}"])


def format_table(result: dict, label: str = "Ours") -> str:
    """Table 2's row (averages, mm): @nose @mouth @forehead @cheek @all."""
    s = result["summary"]
    cells = [f"{s['average'][r]:.3f}" for r in REGIONS] + [f"{s['all']:.3f}"]
    return ("| Method | @nose | @mouth | @forehead | @cheek | @all |\n"
            "|---|---|---|---|---|---|\n"
            f"| {label} | " + " | ".join(cells) + " |")


def run(predictions, realy_root, template, keypoints, scale=None, out=None, mask=None,
        label: str = "Ours") -> dict:
    """`face3d eval realy`: `evaluate`, then print REALY's summary and Table 2's
    row. Arguments as `evaluate`'s (template = <topology>.obj, keypoints =
    <topology>.txt); returns its dict."""
    result = evaluate(predictions, realy_root, template, keypoints, scale, out, mask=mask)
    print(format_summary(result))
    print(format_table(result, label))
    print(f"{result['num_scored']} scored, {result['num_skipped']} skipped; "
          f"written: {result['files']['errors']}, {result['files']['json']}")
    return result
