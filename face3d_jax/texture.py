"""Pseudo-ground-truth albedo from a photograph and a fitted mesh (Sec. 3.1-3.2).

Sec. 3.1, texture extraction and correction:
1. `uv_raster`: the UV layout is rasterized once, so every texel knows its
   triangle and barycentrics (the correspondence between the UV domain and the
   mesh surface).
2. `extract_texture`: each texel's surface point is projected with the fitted
   camera (the paper's orthogonal projection is DECA's weak-perspective camera;
   a perspective camera works the same way) and the image is sampled there
   (bilinear). Visibility comes from rasterizing the fitted mesh in the image: a
   texel counts as seen when the triangle drawn at its pixel is its own or
   shares a vertex with it. Its confidence also falls off at grazing angles.
3. `flip_complete`: occluded texels are taken from the flipped image and
   mesh. With a UV layout that is mirror-symmetric about u = 0.5 (FLAME's, which
   the paper's flipped-albedo term of Sec. 4.1 relies on too, and the
   procedural default's, which is exact), extracting from the flipped image
   through the mirrored mesh gives the texture mirrored in u, with the mirrored
   confidence: so the mirror is computed in UV space directly. The original
   texture is kept where it was seen, the mirror fills what was not, and the
   blend weight is the original's confidence, so it follows the pose: a turned
   head takes its hidden cheek from the other side.
4. `push_pull_fill`: texels still without data (seen from neither side, or
   between UV islands) are filled from a weighted image pyramid (push-pull), so
   the map has no holes and mip-mapped lookups near seams stay clean.

Sec. 3.2, albedo from texture: Lambertian surface, distant monochromatic light,
9 SH bands (DECA's basis, `render.shading.sh_basis`). `albedo_from_texture`
fits the light by least squares of the texture's luminance on the SH basis of
the texel normals over the seen texels (Huber-reweighted, so that albedo
features such as brows and lips count less; the directional bands ridge-
regularised, so weak evidence leaves the light nearly ambient), then
A = T / S per channel. Measured in the teacher world (eval/teacher_albedo.py),
where the lights are mostly ambient, this gains little over the naive texture:
the single-albedo-level model cannot tell albedo from shading there. Albedo and light intensity are ambiguous up to a common
scale; we fix it by making the fitted shading average 1 over the fitted texels
(the albedo keeps the texture's mean brightness), or by `albedo_level` (the
wanted mean luminance of the albedo) when a prior is known. The shading is
floored at `min_shading` and the albedo clamped to [0, 1].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

import face3d_kernels as kernels
from face3d_jax.flame.geometry import vertex_normals
from face3d_jax.render import shading

# Rec. 601 luma, the luminance of the monochromatic-light fit.
_LUMA = (0.299, 0.587, 0.114)


@struct.dataclass
class UVRaster:
    """The UV layout rasterized at one texture size.

    face: (Ta, Ta) int32 triangle index per texel, -1 outside the layout.
    bary: (Ta, Ta, 3) float32 barycentrics of the texel centre in that triangle.
    """

    face: Any
    bary: Any

    @property
    def inside(self):
        return self.face >= 0


def uv_raster(uv_coords, uv_faces, size: int) -> UVRaster:
    """Rasterizes the UV layout (texture row 0 at v = 1, as the albedo maps).

    Args:
      uv_coords: (T, 2) float32 UVs in [0, 1], v up.
      uv_faces: (F, 3) int32 UV corners of the mesh's triangles (same order).
      size: texture size Ta.
    Returns:
      A `UVRaster`.
    """
    uv = jnp.asarray(uv_coords, jnp.float32)
    # NDC x = 2u - 1; NDC y = 1 - 2v puts v = 1 on row 0 (kernels' row 0 is NDC y = -1).
    pos = jnp.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1], jnp.zeros_like(uv[:, 0]),
                     jnp.ones_like(uv[:, 0])], axis=-1)[None]
    rast, _ = kernels.rasterize(pos, jnp.asarray(uv_faces, jnp.int32), (size, size),
                                grad_db=False)
    rast = rast[0]
    u, v = rast[..., 0], rast[..., 1]
    return UVRaster(face=rast[..., 3].astype(jnp.int32) - 1,
                    bary=jnp.stack([u, v, 1.0 - u - v], axis=-1))


def uv_interpolate(uvr: UVRaster, attr, faces):
    """Per-vertex attributes at every texel.

    Args:
      uvr: the UV raster.
      attr: (B, V, C) float32 per-vertex attributes (positions, normals).
      faces: (F, 3) int32 mesh triangles, in the order of the UV triangles.
    Returns:
      (B, Ta, Ta, C) float32, 0 outside the layout.
    """
    corners = jnp.asarray(faces, jnp.int32)[jnp.maximum(uvr.face, 0)]  # (Ta, Ta, 3)
    values = attr[:, corners]  # (B, Ta, Ta, 3, C)
    out = jnp.einsum("bijkc,ijk->bijc", values, uvr.bary)
    return jnp.where(uvr.inside[None, ..., None], out, 0.0)


class ExtractedTexture(NamedTuple):
    """texture: (B, Ta, Ta, 3) float32 image colours at each texel's projection.
    confidence: (B, Ta, Ta) float32 in [0, 1]: 0 where not seen.
    normals: (B, Ta, Ta, 3) float32 unit surface normals (the mesh's frame)."""

    texture: Any
    confidence: Any
    normals: Any


def extract_texture(image, vertices, faces, camera, uvr: UVRaster,
                    grazing=(0.05, 0.35)) -> ExtractedTexture:
    """Sec. 3.1: the UV texture of a fitted mesh, with its visibility.

    Args:
      image: (B, H, W, 3) float32 photograph, row 0 at the top.
      vertices: (B, V, 3) float32 fitted mesh (FLAME's frame).
      faces: (F, 3) int32 triangles, in the order of the UV triangles.
      camera: the fitted camera (`render.WeakPerspectiveCamera` or
        `PerspectiveCamera`): it maps the picture's top to NDC y = -1.
      uvr: `uv_raster` of the layout at the wanted texture size.
      grazing: (lo, hi) cosines between normal and view direction: confidence
        ramps from 0 at lo to 1 at hi (grazing texels are smeared).
    Returns:
      An `ExtractedTexture`.
    """
    batch, height, width = image.shape[:3]
    faces = jnp.asarray(faces, jnp.int32)
    clip = camera.project(vertices)  # (B, V, 4)
    texel_clip = uv_interpolate(uvr, clip, faces)  # projection is linear in clip space
    w = jnp.where(uvr.inside[None], texel_clip[..., 3], 1.0)
    s = 0.5 * (texel_clip[..., 0] / w + 1.0)  # [0, 1] across the image, 0 at column 0's edge
    t = 0.5 * (texel_clip[..., 1] / w + 1.0)  # [0, 1] down the image
    colour = kernels.texture(image, jnp.stack([s, t], axis=-1), filter_mode="linear",
                             boundary_mode="clamp")

    rast, _ = kernels.rasterize(clip, faces, (height, width), grad_db=False)
    col = jnp.clip(jnp.floor(s * width), 0, width - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(t * height), 0, height - 1).astype(jnp.int32)
    drawn = jax.vmap(lambda r, i, j: r[i, j, 3])(rast, row, col).astype(jnp.int32) - 1
    own = faces[jnp.maximum(uvr.face, 0)][None]  # (1, Ta, Ta, 3)
    other = faces[jnp.maximum(drawn, 0)]  # (B, Ta, Ta, 3)
    shares = jnp.any(own[..., :, None] == other[..., None, :], axis=(-1, -2))
    on_image = (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
    seen = uvr.inside[None] & on_image & (drawn >= 0) & shares

    normals = uv_interpolate(uvr, vertex_normals(vertices, faces), faces)
    normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    points = uv_interpolate(uvr, vertices, faces)
    view = camera.view_dirs(points.reshape(batch, -1, 3)).reshape(points.shape)
    cosine = jnp.sum(normals * view, axis=-1)
    lo, hi = grazing
    confidence = jnp.where(seen, jnp.clip((cosine - lo) / (hi - lo), 0.0, 1.0), 0.0)
    return ExtractedTexture(texture=colour * (confidence > 0)[..., None],
                            confidence=confidence, normals=normals)


def flip_complete(texture, confidence):
    """Sec. 3.1's correction: occluded texels from the flipped image and mesh.

    Args:
      texture: (B, Ta, Ta, C) float32 extracted texture.
      confidence: (B, Ta, Ta) float32 in [0, 1].
    Returns:
      texture (B, Ta, Ta, C) float32 blended; its confidence (B, Ta, Ta), the
      max of the original's and the mirror's; and alpha (B, Ta, Ta), the
      original's share of each texel (1 - alpha came from the mirror).
    """
    mirrored, mirrored_conf = texture[:, :, ::-1], confidence[:, :, ::-1]
    alpha = jnp.where(mirrored_conf > 0, confidence, 1.0)
    blended = alpha[..., None] * texture + (1.0 - alpha[..., None]) * mirrored
    return blended, jnp.maximum(confidence, mirrored_conf), alpha


def push_pull_fill(texture, known):
    """Fills texels without data from a weighted pyramid (push-pull).

    Args:
      texture: (B, Ta, Ta, C) float32 with Ta divisible by 2 as often as the
        pyramid halves it (a power of two fills every hole).
      known: (B, Ta, Ta) float32 weights, 0 where a texel has no data.
    Returns:
      (B, Ta, Ta, C) float32: known texels unchanged, others filled.
    """
    weight = (known > 0).astype(texture.dtype)[..., None]
    levels = [(texture * weight, weight)]
    while levels[-1][1].shape[1] % 2 == 0 and levels[-1][1].shape[1] > 1:
        colour, w = levels[-1]
        b, h, wd, c = colour.shape
        colour = colour.reshape(b, h // 2, 2, wd // 2, 2, c).sum(axis=(2, 4))
        w = w.reshape(b, h // 2, 2, wd // 2, 2, 1).sum(axis=(2, 4))
        levels.append((colour, w))
    colour, w = levels[-1]
    filled = colour / jnp.maximum(w, 1e-12)
    for colour, w in reversed(levels[:-1]):
        up = jnp.repeat(jnp.repeat(filled, 2, axis=1), 2, axis=2)
        filled = jnp.where(w > 0, colour / jnp.maximum(w, 1e-12), up)
    return filled


def estimate_sh_light(texture, normals, weight, ridge: float = 0.1, robust_steps: int = 3):
    """Sec. 3.2: monochromatic SH light from a texture and its normals.

    Least squares of the texture's luminance Y on the SH basis:
    l = argmin sum_ij w_ij (H(N_ij) . l - Y_ij)^2 + ridge * n * |l_1..8|^2,
    with the ambient band left unregularised. The model T = A S with one
    albedo level is wrong wherever the albedo itself changes (brows, lips,
    eyes, the mouth's inside), so `robust_steps` reweighting rounds (Huber's
    weights, the scale from the median absolute residual) let those texels
    count less.

    Args:
      texture: (B, Ta, Ta, 3) float32.
      normals: (B, Ta, Ta, 3) float32 unit normals.
      weight: (B, Ta, Ta) float32 >= 0, 0 for texels left out.
      ridge: regulariser of the 8 directional bands, relative to the total
        weight n.
      robust_steps: reweighting rounds after the plain least-squares fit.
    Returns:
      (B, 9) float32 coefficients; they absorb the albedo's mean luminance.
    """
    luma = texture @ jnp.asarray(_LUMA, texture.dtype)
    b = shading.sh_basis(normals).reshape(normals.shape[0], -1, 9)
    y = luma.reshape(luma.shape[0], -1)
    w0 = weight.reshape(weight.shape[0], -1)
    penalty = jnp.asarray([0.0] + [1.0] * 8, texture.dtype)

    def solve(w):
        n = jnp.maximum(jnp.sum(w, axis=1), 1.0)
        gram = jnp.einsum("bnk,bnl->bkl", b * w[..., None], b)
        gram = gram + (ridge * n)[:, None, None] * jnp.diag(penalty)
        rhs = jnp.einsum("bnk,bn->bk", b * w[..., None], y)
        return jnp.linalg.solve(gram + 1e-9 * jnp.eye(9), rhs[..., None])[..., 0]

    light = solve(w0)
    for _ in range(robust_steps):
        residual = jnp.abs(jnp.einsum("bnk,bk->bn", b, light) - y)
        # Weighted median of |r| over the fitted texels, via the fitted texels only.
        masked = jnp.where(w0 > 0, residual, jnp.nan)
        scale = 1.4826 * jnp.nanmedian(masked, axis=1, keepdims=True)
        huber = jnp.minimum(1.0, 1.345 * jnp.maximum(scale, 1e-6) / jnp.maximum(residual, 1e-12))
        light = solve(w0 * huber)
    return light


def albedo_from_texture(texture, normals, weight, *, mirror_alpha=None,
                        min_shading: float = 0.25, albedo_level: float | None = None,
                        ridge: float = 0.1):
    """Sec. 3.2: A = T / S with S = sum_b L_b H_b(N) fitted to the texture.

    The light is fitted on the texels seen in the image (`weight`). A texel
    that the flip completion took from the mirror was lit as its mirror image
    was: flipping the image flips the light too. So where `mirror_alpha` is
    given, S = alpha S(N) + (1 - alpha) S_mirrored, S_mirrored being the
    shading of the mirrored texel, and A = T / S holds on both sides.

    Args:
      texture: (B, Ta, Ta, 3) float32 completed texture.
      normals: (B, Ta, Ta, 3) float32 unit normals (the light's frame).
      weight: (B, Ta, Ta) float32 texels used for the light fit.
      mirror_alpha: optional (B, Ta, Ta) original share from `flip_complete`.
      min_shading: floor of S before dividing (S averages 1 over the fitted
        texels unless `albedo_level` rescales it): where the fitted light
        extrapolates to dark shading (normals far from those seen), a lower
        floor blows the albedo out.
      albedo_level: mean luminance wanted for the albedo over the fitted
        texels; None: the shading averages 1 there (see the module docstring).
      ridge: `estimate_sh_light`'s regulariser.
    Returns:
      albedo (B, Ta, Ta, 3) in [0, 1], shading (B, Ta, Ta, 1) and sh (B, 9, 3)
      (the same coefficients in every channel: the light is monochromatic).
    """
    light = estimate_sh_light(texture, normals, weight, ridge)
    raw = jnp.einsum("bijk,bk->bij", shading.sh_basis(normals), light)
    total = jnp.maximum(jnp.sum(weight, axis=(1, 2)), 1e-12)
    if albedo_level is None:
        scale = jnp.sum(raw * weight, axis=(1, 2)) / total
    else:
        luma = texture @ jnp.asarray(_LUMA, texture.dtype)
        mean_luma = jnp.sum(luma * weight, axis=(1, 2)) / total
        scale = jnp.sum(raw * weight, axis=(1, 2)) / total * albedo_level / jnp.maximum(
            mean_luma, 1e-12)
    scale = jnp.maximum(scale, 1e-12)[:, None, None]
    if mirror_alpha is not None:
        raw = mirror_alpha * raw + (1.0 - mirror_alpha) * raw[:, :, ::-1]
    shade = jnp.maximum(raw / scale, min_shading)[..., None]
    albedo = jnp.clip(texture / shade, 0.0, 1.0)
    sh = jnp.repeat((light / scale[:, :, 0])[:, :, None], 3, axis=2)
    return albedo, shade, sh


class PseudoAlbedo(NamedTuple):
    """Everything Sec. 3 extracts, all (B, Ta, Ta, .) float32 in UV space."""

    albedo: Any       # (B, Ta, Ta, 3) A_GT
    shading: Any      # (B, Ta, Ta, 1) S
    texture: Any      # (B, Ta, Ta, 3) completed, filled texture T
    raw_texture: Any  # (B, Ta, Ta, 3) before the flip completion (0 where unseen)
    confidence: Any   # (B, Ta, Ta) of the completed texture
    sh: Any           # (B, 9, 3) the fitted light


def pseudo_ground_truth_albedo(image, vertices, faces, uv_coords, uv_faces, camera,
                               size: int = 256, uvr: UVRaster | None = None,
                               albedo_level: float | None = None) -> PseudoAlbedo:
    """Sec. 3.1 + 3.2 in one call (see the module docstring).

    Args:
      image: (B, H, W, 3) float32 in [0, 1].
      vertices: (B, V, 3) fitted mesh; faces (F, 3); uv_coords (T, 2);
        uv_faces (F, 3); camera: the fitted camera.
      size: texture size (a power of two fills every hole).
      uvr: a precomputed `uv_raster` (saves the UV rasterization per call).
      albedo_level: see `albedo_from_texture`.
    Returns:
      A `PseudoAlbedo`.
    """
    if uvr is None:
        uvr = uv_raster(uv_coords, uv_faces, size)
    raw = extract_texture(image, vertices, faces, camera, uvr)
    blended, confidence, alpha = flip_complete(raw.texture, raw.confidence)
    filled = push_pull_fill(blended, confidence)
    albedo, shade, sh = albedo_from_texture(filled, raw.normals, raw.confidence,
                                            mirror_alpha=alpha, albedo_level=albedo_level)
    inside = uvr.inside[None, ..., None]
    # Outside the UV layout: the filled colours, so seams do not bleed dark.
    known = jnp.broadcast_to(inside[..., 0], albedo.shape[:3]).astype(albedo.dtype)
    albedo = jnp.where(inside, albedo, push_pull_fill(albedo * inside, known))
    return PseudoAlbedo(albedo=albedo, shading=shade, texture=filled, raw_texture=raw.texture,
                        confidence=confidence, sh=sh)
