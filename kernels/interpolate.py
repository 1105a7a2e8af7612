"""`interpolate`: nvdiffrast's second primitive, vertex attributes over the image.

For a covered pixel with rast = (u, v, z/w, id + 1) and triangle id's vertex
attributes a0, a1, a2, the output is u a0 + v a1 + (1 - u - v) a2 (u, v are
already perspective-correct); empty pixels give 0. With rast_db = (du/dX,
du/dY, dv/dX, dv/dY), the image-space derivatives of an attribute are
dA/dX = du/dX (a0 - a2) + dv/dX (a1 - a2) and likewise for Y, laid out as
nvdiffrast does: (dA0/dX, dA0/dY, dA1/dX, dA1/dY, ...) over the selected
attributes. Plain jnp, so gradients flow to attr, to rast's (u, v) (hence to
the clip-space positions through `rasterize`) and to rast_db.
"""

from __future__ import annotations

import jax.numpy as jnp

from face3d_kernels import checks


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    """Interpolates vertex attributes (nvdiffrast's `interpolate`).

    Args:
      attr: (B, V, C) float32 per-image attributes, or (V, C) shared by the
        batch (nvdiffrast's instanced mode); other floating dtypes are
        converted to float32.
      rast: (B, H, W, 4) float32 (u, v, z/w, triangle_id + 1) from `rasterize`.
      tri: (T, 3) int32 indices into attr's V axis, one row per rasterized
        triangle (the same triangles, or e.g. FLAME's UV faces with the same
        triangle order).
      rast_db: (B, H, W, 4) float32 (du/dX, du/dY, dv/dX, dv/dY) from
        `rasterize`; needed for out_da.
      diff_attrs: None, "all", or a sequence of attribute (channel) indices
        whose image-space derivatives are wanted.
    Returns:
      out: (B, H, W, C) float32 interpolated attributes, 0 where empty.
      out_da: (B, H, W, 2 * len(diff_attrs)) float32 = (dA/dX, dA/dY) per
        selected attribute in pixel units, 0 where empty; None unless both
        rast_db and diff_attrs are given.
    """
    fn = "interpolate"
    attr = checks.float_array(attr, "attr", fn)
    rast = checks.float_array(rast, "rast", fn)
    if rast.ndim != 4 or rast.shape[-1] != 4:
        raise ValueError(f"{fn}: rast must be (B, H, W, 4), got {rast.shape}")
    batch = rast.shape[0]
    if attr.ndim not in (2, 3) or (attr.ndim == 3 and attr.shape[0] != batch):
        raise ValueError(f"{fn}: attr must be (B, V, C) with B = {batch} or (V, C), "
                         f"got {attr.shape}")
    num_vertices, channels = attr.shape[-2], attr.shape[-1]
    tri = checks.triangles(tri, num_vertices, fn)
    if rast_db is not None:
        rast_db = checks.float_array(rast_db, "rast_db", fn)
        if rast_db.shape != rast.shape:
            raise ValueError(f"{fn}: rast_db must have rast's shape {rast.shape}, "
                             f"got {rast_db.shape}")
    selected = _selected(diff_attrs, channels)

    ids = rast[..., 3].astype(jnp.int32)
    covered = (ids > 0)[..., None]
    corners = tri[jnp.maximum(ids - 1, 0)]  # (B, H, W, 3)
    if attr.ndim == 3:  # one gather over the flattened batch
        corners = corners + (jnp.arange(batch, dtype=jnp.int32) * num_vertices)[:, None, None, None]
        attr = attr.reshape(batch * num_vertices, channels)
    a = attr[corners]  # (B, H, W, 3, C)
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = jnp.where(covered, u * a[..., 0, :] + v * a[..., 1, :] + (1.0 - u - v) * a[..., 2, :],
                    0.0)
    if selected is None or rast_db is None:
        return out, None
    sel = a[..., jnp.asarray(selected, jnp.int32)]
    d0, d1 = sel[..., 0, :] - sel[..., 2, :], sel[..., 1, :] - sel[..., 2, :]
    da_dx = rast_db[..., 0:1] * d0 + rast_db[..., 2:3] * d1
    da_dy = rast_db[..., 1:2] * d0 + rast_db[..., 3:4] * d1
    out_da = jnp.stack([da_dx, da_dy], axis=-1).reshape(da_dx.shape[:-1] + (2 * len(selected),))
    return out, jnp.where(covered, out_da, 0.0)


def _selected(diff_attrs, channels):
    """diff_attrs as a list of channel indices, or None."""
    if diff_attrs is None:
        return None
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"interpolate: diff_attrs must be 'all' or a sequence of "
                             f"indices, got {diff_attrs!r}")
        return list(range(channels))
    selected = [int(i) for i in diff_attrs]
    if any(i < 0 or i >= channels for i in selected):
        raise ValueError(f"interpolate: diff_attrs {selected} out of range for {channels} "
                         "attribute channels")
    return selected
