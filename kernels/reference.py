"""A brute-force rasterizer for tests, written as simply as possible: numpy,
float64, every pixel centre against every triangle.

Same conventions as `rasterize` (see rasterize.py): k = A^-1 (X, Y, 1) with A's
columns the corners' (x, y, w); covered iff every k_i >= 0 and sum(k) > 0, with
the top-left rule where k_i == 0 exactly; b = k / sum(k); z/w = sum_i k_i z_i,
kept only inside [-1, 1]; nearest z/w wins, exact ties go to the larger id.
"""

from __future__ import annotations

import numpy as np


def rasterize_reference(pos, tri, resolution):
    """Brute-force `rasterize`.

    Args:
      pos: (B, V, 4) or (V, 4) clip-space positions.
      tri: (T, 3) vertex indices.
      resolution: (H, W).
    Returns:
      rast (B, H, W, 4) float64 (u, v, z/w, id + 1) and rast_db (B, H, W, 4)
      float64 (du/dX, du/dY, dv/dX, dv/dY), zeros where empty.
    """
    pos = np.asarray(pos, np.float64)
    pos = pos[None] if pos.ndim == 2 else pos
    tri = np.asarray(tri, np.int64)
    height, width = resolution
    rast = np.zeros((pos.shape[0], height, width, 4))
    rast_db = np.zeros_like(rast)
    for n, p in enumerate(pos):
        a = np.stack([p[tri, 0], p[tri, 1], p[tri, 3]], axis=1)  # (T, 3 rows, 3 corners)
        det = np.linalg.det(a)
        ok = det != 0
        a_inv = np.linalg.inv(np.where(ok[:, None, None], a, np.eye(3)))
        # The gradient of k_i along the image decides edge ties (top-left rule).
        gx, gy = a_inv[:, :, 0], a_inv[:, :, 1]
        top_left = (gx > 0) | ((gx == 0) & (gy > 0))
        z = p[tri, 2]
        for i in range(height):
            for j in range(width):
                point = np.array([(2 * j + 1) / width - 1, (2 * i + 1) / height - 1, 1.0])
                k = a_inv @ point  # (T, 3), for every triangle at once
                depth = np.sum(k * z, axis=1)
                inside = (ok & np.all((k > 0) | ((k == 0) & top_left), axis=1)
                          & (k.sum(1) > 0) & (depth >= -1) & (depth <= 1))
                if not inside.any():
                    continue
                best = np.where(inside, depth, np.inf)
                t = np.flatnonzero(best == best.min())[-1]  # ties: the larger id
                total = k[t].sum()
                b = k[t] / total
                dk = np.stack([a_inv[t, :, 0] * 2 / width, a_inv[t, :, 1] * 2 / height])
                db = (dk - b[None] * dk.sum(1, keepdims=True)) / total  # (X/Y, corner)
                rast[n, i, j] = [b[0], b[1], depth[t], t + 1]
                rast_db[n, i, j] = [db[0, 0], db[1, 0], db[0, 1], db[1, 1]]
    return rast, rast_db
