"""InterFaceGAN boundaries (Shen et al., TPAMI 2020) for Sec. 5.1's edits.

A boundary is the unit normal n (style_dim,) of a linear classifier that
separates latent codes with a high attribute value from those with a low one;
editing moves a code along it, w' = w + alpha n (every row of w+).

- `fit_boundary`: InterFaceGAN trains a linear SVM on the codes whose scores are
  in the top and bottom `ratio` (their `chosen_num_or_ratio`, 0.02 of 500K
  samples) and takes the normalised weight; we fit an L2-regularised logistic
  regression (Newton's method, numpy) on the same top/bottom split, which
  gives the same separating direction for (nearly) separable classes. The
  feature is the first row of w (InterFaceGAN edits W, where all rows agree).
- `landmark_labels`: attribute scores from 68 iBUG landmarks, for StyleGAN2
  images that have no attribute labels (the brief's "labels from the landmark
  / pose estimate"): yaw from the nose's horizontal position between the jaw
  contour's ends, pitch from the nose tip's height between the eyes and the
  mouth, jaw opening from the inner-lip gap, smile from the mouth corners'
  rise above the lip centres, brow raise from the brow-to-eye gap, roll from
  the eye line's angle. Each is normalised by the interocular distance, so
  they are scale-free scores (not degrees/mm): only their order matters for
  a boundary.
- `save_boundary` / `load_boundary`: InterFaceGAN's .npy format, (1, style_dim)
  float32 (style_dim,) also accepted.
- `edit_alphas`: the step alpha that puts a code's projection on n at a target
  offset in units of the projection's spread over the generator's codes
  (InterFaceGAN's `linear_interpolate` from start to end distance).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EDIT_ATTRIBUTES = ("smile", "jaw_open", "yaw", "pitch")  # expression and pose (Sec. 5.1)


def fit_boundary(w, scores, ratio: float = 0.5, l2: float = 1e-3, iters: int = 10) -> np.ndarray:
    """The InterFaceGAN boundary of one attribute.

    Args:
      w: (N, style_dim) or (N, n_latent, style_dim) float latent codes (the first
        row is used).
      scores: (N,) float attribute values (NaN entries are ignored).
      ratio: fraction of codes taken as positives (highest scores) and as
        negatives (lowest); the middle is left out as InterFaceGAN does.
      l2: ridge weight on the standardised features.
      iters: Newton iterations.
    Returns:
      (style_dim,) float32 unit normal pointing towards higher scores.
    """
    x = np.asarray(w, np.float64)
    x = x[:, 0] if x.ndim == 3 else x
    s = np.asarray(scores, np.float64)
    keep = np.isfinite(s)
    x, s = x[keep], s[keep]
    if len(s) < 8:
        raise ValueError(f"fit_boundary: {len(s)} labelled codes, expected at least 8")
    order = np.argsort(s, kind="stable")
    k = max(2, round(ratio * len(s)))
    idx = np.concatenate([order[:k], order[-k:]])
    x, y = x[idx], np.concatenate([np.zeros(k), np.ones(k)])
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    theta = np.zeros(xs.shape[1])
    reg = np.full(xs.shape[1], l2 * len(x))
    reg[-1] = 0.0  # the intercept is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xs @ theta)))
        grad = xs.T @ (p - y) + reg * theta
        hess = (xs * (p * (1 - p))[:, None]).T @ xs + np.diag(reg + 1e-9)
        theta -= np.linalg.solve(hess, grad)
    normal = theta[:-1] / sd  # back to the raw coordinates of w
    return (normal / np.linalg.norm(normal)).astype(np.float32)


def landmark_labels(landmarks) -> dict:
    """Scale-free attribute scores from iBUG 68 landmarks (see module doc).

    Args:
      landmarks: (B, 68, 2) float image pixels (x right, y down).
    Returns:
      dict of (B,) float32: yaw, pitch, roll, jaw_open, smile, brow_raise
      (NaN where the landmarks are NaN).
    """
    p = np.asarray(landmarks, np.float64)
    eye_l, eye_r = p[:, 36:42].mean(1), p[:, 42:48].mean(1)
    iod = np.linalg.norm(eye_r - eye_l, axis=-1) + 1e-8
    nose = p[:, 30]
    jaw_l, jaw_r = p[:, 0], p[:, 16]
    left, right = np.linalg.norm(nose - jaw_l, axis=-1), np.linalg.norm(jaw_r - nose, axis=-1)
    mouth = p[:, 48:60].mean(1)
    eyes = (eye_l + eye_r) / 2
    pitch = ((nose[:, 1] - eyes[:, 1]) / (mouth[:, 1] - eyes[:, 1] + 1e-8))
    d = eye_r - eye_l
    corners = (p[:, 48, 1] + p[:, 54, 1]) / 2
    centres = (p[:, 51, 1] + p[:, 57, 1]) / 2
    brows = p[:, 17:27, 1].mean(1)
    out = {"yaw": (left - right) / (left + right + 1e-8),
           "pitch": pitch,
           "roll": np.degrees(np.arctan2(d[:, 1], d[:, 0])),
           "jaw_open": (p[:, 66, 1] - p[:, 62, 1]) / iod,
           "smile": (centres - corners) / iod,
           "brow_raise": (eyes[:, 1] - brows) / iod}
    return {k: v.astype(np.float32) for k, v in out.items()}


def save_boundary(path, normal) -> Path:
    """Writes (1, style_dim) float32 as InterFaceGAN does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(normal, np.float32).reshape(1, -1))
    return path


def load_boundary(path, style_dim: int) -> np.ndarray:
    """A boundary .npy ((style_dim,) or (1, style_dim) float) -> (style_dim,)
    float32 unit vector."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such boundary file")
    try:
        n = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from None
    if n.size != style_dim or not np.issubdtype(n.dtype, np.floating) or n.ndim > 2:
        raise ValueError(f"{path}: boundary has shape {n.shape} and dtype {n.dtype}, expected "
                         f"float ({style_dim},) or (1, {style_dim})")
    n = n.reshape(-1).astype(np.float64)
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"{path}: boundary is zero or not finite")
    return (n / norm).astype(np.float32)


def edit_alphas(w, normal, targets, reference_w) -> np.ndarray:
    """alpha with (w + alpha n) . n = mean + target * std of the reference
    codes' projections: edits to a chosen place along the boundary normal.

    Args:
      w: (B, style_dim) or (B, n_latent, style_dim) codes (first row used).
      normal: (style_dim,) unit boundary.
      targets: (B,) float offsets in standard deviations.
      reference_w: (M, style_dim) or (M, n_latent, style_dim) codes sampling
        the generator's distribution.
    Returns:
      (B,) float32.
    """
    w = np.asarray(w, np.float64)
    w = w[:, 0] if w.ndim == 3 else w
    ref = np.asarray(reference_w, np.float64)
    ref = ref[:, 0] if ref.ndim == 3 else ref
    n = np.asarray(normal, np.float64)
    proj_ref = ref @ n
    goal = proj_ref.mean() + np.asarray(targets, np.float64) * proj_ref.std()
    return (goal - w @ n).astype(np.float32)
