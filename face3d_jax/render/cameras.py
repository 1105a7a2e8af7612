"""Cameras: FLAME-space vertices to the rasterizer's clip space and to pixels.

Image convention used by the face renderer: pixel (row i, column j) has its
centre at continuous pixel coordinates (x, y) = (j + 0.5, i + 0.5), rows top
to bottom. The kernels follow nvdiffrast, whose row i has its centre at NDC
y = (2i + 1) / H - 1; the cameras below therefore map image-down to NDC +y, so
row 0 of the rasterizer's output is the top row of the picture (no flip).

Two cameras, as the paper's sources use:
  - weak perspective (DECA's `batch_orth_proj`): cam = (s, tx, ty),
    NDC = s * (X + t) with y negated for top-down rows; orthographic depth.
  - perspective with pinhole intrinsics (fx, fy, cx, cy in pixels) and a
    world-to-camera rotation and translation in OpenCV's frame (x right,
    y down, z forward): OpenGL-style clip space with near and far planes.
"""

from __future__ import annotations

import jax.numpy as jnp


def weak_perspective(vertices, cam, depth_scale: float = 0.1):
    """DECA's orthographic camera, to clip space.

    Args:
      vertices: (B, N, 3) float32 points in FLAME space (metres, y up, +z
        towards the camera).
      cam: (B, 3) float32 (s, tx, ty): scale (NDC per metre) and translation
        (metres) applied before scaling, as DECA's `batch_orth_proj`.
      depth_scale: NDC depth per (scaled) metre; only orders surfaces. The
        default keeps FLAME heads at DECA's scales (s ~ 5..12) inside [-1, 1].
    Returns:
      (B, N, 4) float32 clip-space positions (x, y, z, w = 1).
    """
    s = cam[:, None, 0:1]
    xy = s * (vertices[..., :2] + cam[:, None, 1:3])
    x, y = xy[..., 0], -xy[..., 1]  # image rows run downwards
    z = -s[..., 0] * vertices[..., 2] * depth_scale  # nearer (larger Z) -> smaller z
    return jnp.stack([x, y, z, jnp.ones_like(x)], axis=-1)


def world_to_camera(points, rotation, translation):
    """Rigid transform into the camera frame (OpenCV axes: x right, y down,
    z forward).

    Args:
      points: (B, N, 3) float32; rotation: (B, 3, 3); translation: (B, 3).
    Returns:
      (B, N, 3) float32 camera-frame points R p + t.
    """
    return jnp.einsum("brc,bnc->bnr", rotation, points) + translation[:, None]


def perspective(points_cam, intrinsics, resolution, near: float = 0.05, far: float = 10.0):
    """Pinhole projection of camera-frame points to OpenGL-style clip space.

    Args:
      points_cam: (B, N, 3) float32 in the camera frame (z > 0 in front).
      intrinsics: (B, 4) float32 (fx, fy, cx, cy) in pixels of `resolution`.
      resolution: (H, W) ints.
      near, far: clipping planes (metres); z/w maps [near, far] to [-1, 1].
    Returns:
      (B, N, 4) float32 clip-space positions; x/w, y/w are NDC with the pixel
      convention of this module, w = z.
    """
    height, width = resolution
    fx, fy, cx, cy = (intrinsics[:, None, k] for k in range(4))
    x, y, z = points_cam[..., 0], points_cam[..., 1], points_cam[..., 2]
    clip_x = (2.0 * fx * x + (2.0 * cx - width) * z) / width
    clip_y = (2.0 * fy * y + (2.0 * cy - height) * z) / height
    clip_z = (z * (far + near) - 2.0 * far * near) / (far - near)
    return jnp.stack([clip_x, clip_y, clip_z, z], axis=-1)


def clip_to_pixels(clip, resolution):
    """Continuous pixel coordinates of clip-space points.

    Args:
      clip: (B, N, 4) float32.
      resolution: (H, W) ints.
    Returns:
      (B, N, 2) float32 (x, y): x along columns, y along rows (downwards);
      pixel (i, j) has its centre at (j + 0.5, i + 0.5).
    """
    height, width = resolution
    ndc = clip[..., :2] / clip[..., 3:4]
    return jnp.stack([(ndc[..., 0] + 1.0) * 0.5 * width, (ndc[..., 1] + 1.0) * 0.5 * height],
                     axis=-1)


def look_at_face(distance, batch: int = 1):
    """A camera `distance` metres in front of the face (+z), looking at the
    origin: rotation (B, 3, 3) and translation (B, 3) for `world_to_camera`.

    FLAME's y-up, +z-towards-viewer frame becomes OpenCV's y-down, z-forward
    frame by a half-turn about x.
    """
    rotation = jnp.broadcast_to(jnp.diag(jnp.array([1.0, -1.0, -1.0])), (batch, 3, 3))
    translation = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]) * distance, (batch, 3))
    return rotation, translation
