"""A brute-force rasterizer written as simply as possible: every triangle
against every pixel centre, in float64, one triangle at a time."""

import numpy as np


def rasterize_reference(pos, tri, height, width):
    """pos (V, 4) clip space, tri (T, 3) -> (H, W, 4) (u, v, z/w, id + 1)."""
    out = np.zeros((height, width, 4))
    depth = np.full((height, width), np.inf)
    for t, corners in enumerate(tri):
        a = np.stack([pos[corners, 0], pos[corners, 1], pos[corners, 3]])
        if abs(np.linalg.det(a)) < 1e-20:
            continue
        a_inv = np.linalg.inv(a)
        # Every pixel centre against this triangle (plain numpy, float64).
        cols, rows = np.meshgrid(np.arange(width), np.arange(height))
        p = np.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1,
                      np.ones_like(cols, float)], axis=-1)
        k = p @ a_inv.T
        z = k @ pos[corners, 2]
        inside = np.all(k >= 0, axis=-1) & (k.sum(-1) > 0) & (z >= -1) & (z <= 1)
        nearer = (z < depth) | ((z == depth) & (t + 1 > out[..., 3]))
        win = inside & nearer
        depth[win] = z[win]
        b = k / np.where(k.sum(-1, keepdims=True) == 0, 1, k.sum(-1, keepdims=True))
        out[win] = np.concatenate([b[..., :2], z[..., None], np.full(z.shape + (1,), t + 1.0)],
                                  axis=-1)[win]
    return out
