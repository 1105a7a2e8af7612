"""`render`: a FLAME mesh with a UV albedo, under a camera and a light.

Composed from face3d_kernels' four primitives, as DECA composes PyTorch3D's
and nvdiffrast users compose nvdiffrast's: rasterize the clip-space mesh,
interpolate UVs and normals, sample the albedo (and an optional normal map),
shade (spherical harmonics, Sec. 3.2, or Phong, Sec. 4), composite over a
background and antialias the silhouettes, which is where the gradients with
respect to the vertex positions come from.

Frames: vertices and normals in FLAME's frame (metres, y up, +z towards the
viewer); SH coefficients and Phong lights live in that frame too. Images are
top row first (see cameras.py). UV maps follow the OBJ convention used by
FLAME (v up), stored as images whose row 0 is v = 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

import face3d_kernels as kernels
from face3d_jax.flame.geometry import vertex_normals
from face3d_jax.render import cameras, shading


@struct.dataclass
class WeakPerspectiveCamera:
    """DECA's camera: cam (B, 3) = (s, tx, ty); see `cameras.weak_perspective`."""

    cam: Any

    def project(self, points):
        return cameras.weak_perspective(points, self.cam)

    def view_dirs(self, points):
        return jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], points.dtype), points.shape)


@struct.dataclass
class PerspectiveCamera:
    """Pinhole camera: rotation (B, 3, 3), translation (B, 3) world-to-camera
    (OpenCV axes), intrinsics (B, 4) = (fx, fy, cx, cy) in pixels of
    `resolution`; near and far planes in metres."""

    rotation: Any
    translation: Any
    intrinsics: Any
    resolution: tuple[int, int] = struct.field(pytree_node=False)
    near: float = struct.field(pytree_node=False, default=0.05)
    far: float = struct.field(pytree_node=False, default=10.0)

    def project(self, points):
        cam_points = cameras.world_to_camera(points, self.rotation, self.translation)
        return cameras.perspective(cam_points, self.intrinsics, self.resolution, self.near,
                                   self.far)

    def view_dirs(self, points):
        centre = -jnp.einsum("brc,br->bc", self.rotation, self.translation)  # -R^T t
        d = centre[:, None] - points
        return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


@struct.dataclass
class PhongLight:
    """Distant lights for `shading.phong_shading`: directions (B, L, 3) towards
    the lights (unit), colours (B, L, 3), ambient (B, 3), specular k_s and the
    shininess exponent."""

    directions: Any
    colors: Any
    ambient: Any
    specular: Any = 0.1
    shininess: float = struct.field(pytree_node=False, default=20.0)


class RenderOutput(NamedTuple):
    """All (B, H, W, C) float32 images with the top row first.

    image: the antialiased render over the background, (B, H, W, 3).
    mask: antialiased coverage in [0, 1], (B, H, W, 1).
    shading: the light reaching each pixel (SH: S; Phong: diffuse), (B, H, W, 3).
    albedo: the sampled albedo, (B, H, W, 3).
    normals: unit normals per pixel (FLAME frame), (B, H, W, 3).
    landmarks2d: (B, N, 2) pixel coordinates (x right, y down) of the given
      3D landmarks, or None.
    rast: the rasterizer's output (B, H, W, 4), for further kernels.
    """

    image: jnp.ndarray
    mask: jnp.ndarray
    shading: jnp.ndarray
    albedo: jnp.ndarray
    normals: jnp.ndarray
    landmarks2d: Any
    rast: jnp.ndarray


def _normalize(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def render(vertices, faces, uv_coords, uv_faces, albedo_map, camera, resolution, *,
           sh_coeffs=None, phong: PhongLight | None = None, normal_map=None, landmarks=None,
           background=None, filter_mode: str = "linear-mipmap-linear",
           backend: str = "jax") -> RenderOutput:
    """Renders textured, lit faces.

    Args:
      vertices: (B, V, 3) float32 mesh in FLAME's frame (e.g. the detailed mesh
        M' of Sec. 4.2).
      faces: (F, 3) int32 triangles; uv_faces: (F, 3) int32 their UV corners;
        uv_coords: (T, 2) float32 UVs in [0, 1], v up.
      albedo_map: (B, Ht, Wt, 3) float32 UV albedo, row 0 at v = 1.
      camera: a `WeakPerspectiveCamera` or `PerspectiveCamera`.
      resolution: (H, W) of the output.
      sh_coeffs: (B, 9, 3) float32 SH light (Sec. 3.2); or
      phong: a `PhongLight` (Sec. 4). Exactly one of the two.
      normal_map: optional (B, Ht, Wt, 3) UV map of FLAME-frame normals used
        instead of the interpolated vertex normals (detail normals).
      landmarks: optional (B, N, 3) points to project with the same camera.
      background: optional (B, H, W, 3) float32, black if None.
      filter_mode: texture filtering of the albedo (kernels.texture).
      backend: rasterizer backend (kernels.rasterize).
    Returns:
      A `RenderOutput`.
    """
    if (sh_coeffs is None) == (phong is None):
        raise ValueError("render: give exactly one light, sh_coeffs=(B, 9, 3) or phong=PhongLight")
    height, width = resolution
    # From the caller's array: a concrete (numpy or committed) face list gets its
    # edge topology on the host, rather than a sort that XLA would constant-fold
    # at every compile.
    topology = kernels.antialias_construct_topology_hash(faces)
    faces = jnp.asarray(faces, jnp.int32)
    uv_faces = jnp.asarray(uv_faces, jnp.int32)
    clip = camera.project(vertices)
    rast, rast_db = kernels.rasterize(clip, faces, (height, width), grad_db=True, backend=backend)
    covered = (rast[..., 3:4] > 0).astype(vertices.dtype)

    # Texture coordinates in the kernels' convention (v = 0 at texture row 0).
    uv_tex = jnp.stack([uv_coords[:, 0], 1.0 - uv_coords[:, 1]], axis=-1)
    uv, uv_da = kernels.interpolate(uv_tex, rast, uv_faces, rast_db=rast_db, diff_attrs="all")
    albedo = kernels.texture(albedo_map, uv, uv_da, filter_mode=filter_mode,
                             boundary_mode="clamp")
    if normal_map is not None:
        normals = kernels.texture(normal_map, uv, uv_da, filter_mode=filter_mode,
                                  boundary_mode="clamp")
    else:
        normals, _ = kernels.interpolate(vertex_normals(vertices, faces), rast, faces)
    normals = _normalize(normals) * covered

    if sh_coeffs is not None:
        light = shading.sh_shading(normals, sh_coeffs)
        color = albedo * light
    else:
        points, _ = kernels.interpolate(vertices, rast, faces)
        light, spec = shading.phong_shading(
            normals, camera.view_dirs(points.reshape(points.shape[0], -1, 3)).reshape(points.shape),
            phong.directions, phong.colors, phong.ambient, phong.specular, phong.shininess)
        color = albedo * light + spec

    if background is None:
        background = jnp.zeros_like(color)
    composite = color * covered + background * (1.0 - covered)
    packed = jnp.concatenate([composite, covered], axis=-1)
    packed = kernels.antialias(packed, rast, clip, faces, topology_hash=topology)
    landmarks2d = None
    if landmarks is not None:
        landmarks2d = cameras.clip_to_pixels(camera.project(landmarks), (height, width))
    return RenderOutput(image=packed[..., :3], mask=packed[..., 3:], shading=light * covered,
                        albedo=albedo * covered, normals=normals, landmarks2d=landmarks2d,
                        rast=rast)
