"""Input validation shared by the primitives: one-line ValueErrors that name the
function, what was expected and what was found."""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np


def float_array(x, name, fn):
    """`x` as a float32 jax array; any floating dtype is accepted."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a floating-point array, got dtype {dtype}")
    return jnp.asarray(x, jnp.float32)


def triangles(tri, num_vertices, fn, name="tri"):
    """`tri` as an int32 (T, 3) jax array; indices are range-checked when
    concrete (a traced `tri` cannot be read)."""
    dtype = getattr(tri, "dtype", None)
    if dtype is None:
        tri = np.asarray(tri)
        dtype = tri.dtype
    if getattr(tri, "ndim", None) != 2 or tri.shape[-1] != 3:
        raise ValueError(f"{fn}: {name} must be (T, 3) vertex indices, got shape "
                         f"{getattr(tri, 'shape', None)}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{fn}: {name} must be an integer array, got dtype {dtype}")
    if not isinstance(tri, jax.core.Tracer) and tri.shape[0]:
        host = np.asarray(jax.device_get(tri))
        low, high = int(host.min()), int(host.max())
        if low < 0 or high >= num_vertices:
            raise ValueError(f"{fn}: {name} indices span [{low}, {high}], but there are "
                             f"{num_vertices} vertices")
    return jnp.asarray(tri, jnp.int32)


def resolution(value, fn):
    """(H, W) as a tuple of Python ints >= 1."""
    try:
        height, width = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: resolution must be two ints (H, W), got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{fn}: resolution must be >= 1, got {(height, width)}")
    return height, width
