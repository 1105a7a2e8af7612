"""Mesh export: Wavefront OBJ (+ MTL + PNG), binary glTF 2.0 (GLB) and binary PLY.

The file formats are written by trimesh; this module validates the inputs,
builds the trimesh objects without letting trimesh merge or reorder vertices,
and handles UV seams.

Array conventions (numpy arrays; jax arrays and nested lists are accepted too,
through `np.asarray`):

  vertices    (V, 3) float, finite.
  faces       (F, 3) integer, indices into `vertices`, counter-clockwise seen
              from outside.
  uv_coords   (T, 2) float, texture coordinates in [0, 1] with v pointing up
              (the OBJ convention: v = 0 is the bottom row of the image).
  uv_faces    (F, 3) integer, indices into `uv_coords`, one UV per triangle
              corner. FLAME-style meshes have UV seams, so `uv_faces` generally
              differs from `faces`. If omitted and T == V, `faces` is used
              (one UV per vertex).
  texture     (H, W, 3) or (H, W, 4), uint8 or float in [0, 1]; row 0 is the
              top of the image.
  normals     (V, 3) float, per-vertex normals.
  vertex_colors (V, 3) or (V, 4), uint8 or float in [0, 1].

UV seams: OBJ allows separate position and UV indices per corner, but trimesh
(and glTF) hold one UV per vertex. When `uv_faces` is given, vertices are split
at UV seams: each distinct (vertex, uv) pair used by a triangle corner becomes
one exported vertex. The exported vertices come in the order of the input
vertex index (a seam vertex's copies are adjacent) and vertices used by no
triangle are dropped; triangle order and every corner's position and UV are
unchanged. `split_uv_seams` gives the mapping. Without UVs no splitting
happens and vertex i of the file is vertex i of the input.

This module depends on numpy, pillow and trimesh only (no jax import).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "SUPPORTED_SUFFIXES",
    "export_glb",
    "export_mesh",
    "export_obj",
    "export_ply",
    "split_uv_seams",
]

SUPPORTED_SUFFIXES = (".obj", ".glb", ".ply")

# Decimal places of the coordinates written into OBJ text (trimesh's default
# is 8, which loses a little of a float32 coordinate of a unit-scale mesh).
_OBJ_DIGITS = 10

# Tolerance on float colours/textures slightly outside [0, 1].
_COLOR_TOL = 1e-6


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _as_array(name, value):
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name}: expected an array, found {type(value).__name__} ({exc})") from None


def _check_float_array(name, value, ncols, rows=None, rows_desc=None):
    """(N, ncols) finite real array -> float64. `ncols` is an int or a tuple of allowed ints."""
    arr = _as_array(name, value)
    allowed = (ncols,) if isinstance(ncols, int) else tuple(ncols)
    cols_desc = "|".join(str(c) for c in allowed)
    expected = f"({rows_desc or 'N'}, {cols_desc})"
    if arr.ndim != 2 or arr.shape[1] not in allowed:
        raise ValueError(f"{name}: expected shape {expected}, found {_shape_str(arr.shape)}")
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ValueError(f"{name}: expected a real-valued (float) array of shape {expected}, found dtype {arr.dtype}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{name}: expected shape {expected} with {rows_desc} = {rows}, found {_shape_str(arr.shape)}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name}: expected finite values, found {int(bad.any(axis=1).sum())} row(s) with NaN/inf (first: row {row})")
    return arr


def _check_index_array(name, value, count, count_name, rows=None, rows_name="F"):
    """(N, 3) integer array with values in [0, count) -> int64."""
    arr = _as_array(name, value)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name}: expected shape ({rows_name}, 3) (triangles), found {_shape_str(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array of shape ({rows_name}, 3), found dtype {arr.dtype}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(
            f"{name}: expected one row per triangle of faces, shape ({rows}, 3), found {_shape_str(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one triangle, found shape {_shape_str(arr.shape)}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= count:
        raise ValueError(
            f"{name}: expected indices in [0, {count - 1}] ({count_name} = {count}), found range [{lo}, {hi}]"
        )
    return arr


def _check_vertices(vertices):
    arr = _check_float_array("vertices", vertices, 3, rows_desc="V")
    if arr.shape[0] == 0:
        raise ValueError("vertices: expected at least one vertex, found shape (0, 3)")
    return arr


def _check_colors(name, value, shape_desc):
    """uint8 or float-in-[0,1] colour array (shape already checked) -> uint8."""
    arr = _as_array(name, value)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: expected dtype uint8 or float in [0, 1] for {shape_desc}, found dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite float values in [0, 1], found NaN/inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_COLOR_TOL or hi > 1.0 + _COLOR_TOL:
        raise ValueError(f"{name}: expected float values in [0, 1], found range [{lo:.6g}, {hi:.6g}]")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_texture(texture):
    arr = _as_array("texture", texture)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"texture: expected shape (H, W, 3) or (H, W, 4), found {_shape_str(arr.shape)}")
    return _check_colors("texture", arr, "(H, W, 3|4)")


def _check_vertex_colors(vertex_colors, num_vertices):
    arr = _as_array("vertex_colors", vertex_colors)
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or arr.shape[0] != num_vertices:
        raise ValueError(
            f"vertex_colors: expected shape (V, 3) or (V, 4) with V = {num_vertices}, found {_shape_str(arr.shape)}"
        )
    return _check_colors("vertex_colors", arr, "(V, 3|4)")


def _check_uv(uv_coords, uv_faces, faces, texture, num_vertices):
    """Validate the UV inputs. Returns (uv_coords (T,2) float64 or None, uv_faces (F,3) int64 or None)."""
    if uv_coords is None:
        if uv_faces is not None:
            raise ValueError("uv_faces: given without uv_coords; expected uv_coords (T, 2) as well")
        if texture is not None:
            raise ValueError("texture: given without uv_coords; a texture needs uv_coords (T, 2) (and uv_faces (F, 3))")
        return None, None
    uv = _check_float_array("uv_coords", uv_coords, 2, rows_desc="T")
    if uv.shape[0] == 0:
        raise ValueError("uv_coords: expected at least one UV, found shape (0, 2)")
    if uv_faces is None:
        if uv.shape[0] != num_vertices:
            raise ValueError(
                f"uv_faces: expected (F, 3) indices into uv_coords, or omitted only when uv_coords has one row per "
                f"vertex (T = V = {num_vertices}); found uv_faces=None with uv_coords {_shape_str(uv.shape)}"
            )
        return uv, None
    uvf = _check_index_array("uv_faces", uv_faces, uv.shape[0], "T = len(uv_coords)", rows=faces.shape[0])
    return uv, uvf


def _check_path(path, suffix):
    p = Path(os.fspath(path))
    if p.suffix.lower() != suffix:
        raise ValueError(f"path: expected a file name ending in {suffix}, found {str(p)!r}")
    return p


def _prepare_dir(p):
    p.parent.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------
# UV seams
# --------------------------------------------------------------------------


def split_uv_seams(faces, uv_faces):
    """Split vertices at UV seams: one output vertex per distinct (vertex, uv) pair.

    Args:
      faces: (F, 3) integer vertex indices.
      uv_faces: (F, 3) integer UV indices (same triangles, per-corner UVs).
    Returns:
      vertex_index: (N,) int64, the input vertex of each output vertex, non-decreasing.
      uv_index: (N,) int64, the UV of each output vertex.
      new_faces: (F, 3) int64 indices into the N output vertices; corner (f, k)
        has vertex_index[new_faces[f, k]] == faces[f, k] and
        uv_index[new_faces[f, k]] == uv_faces[f, k].
    """
    faces = np.asarray(faces, dtype=np.int64)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    num_uv = int(uv_faces.max()) + 1 if uv_faces.size else 1
    key = faces * num_uv + uv_faces
    uniq, inverse = np.unique(key.reshape(-1), return_inverse=True)
    return uniq // num_uv, uniq % num_uv, inverse.reshape(faces.shape).astype(np.int64)


def _build_trimesh(vertices, faces, uv=None, uv_faces=None, material=None, normals=None, colors=None, name=None):
    """A trimesh.Trimesh without any processing; UV seams split if uv_faces is given."""
    import trimesh

    if uv is not None and uv_faces is not None:
        vidx, tidx, faces = split_uv_seams(faces, uv_faces)
        vertices = vertices[vidx]
        uv = uv[tidx]
        if normals is not None:
            normals = normals[vidx]
    visual = None
    if uv is not None:
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    elif colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=colors)
    mesh = trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        vertex_normals=normals,
        visual=visual,
        process=False,
        validate=False,
        metadata={"name": name} if name else None,
    )
    # trimesh must not have touched the arrays (process=False); guard the invariant.
    assert mesh.vertices.shape == np.shape(vertices) and mesh.faces.shape == np.shape(faces)
    return mesh


def _pil_image(texture_u8):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(texture_u8), mode="RGBA" if texture_u8.shape[2] == 4 else "RGB")


# --------------------------------------------------------------------------
# exporters
# --------------------------------------------------------------------------


def export_obj(path, vertices, faces, uv_coords=None, uv_faces=None, texture=None, normals=None):
    """Write a Wavefront OBJ; with UVs also `<stem>.mtl`, with a texture also `<stem>.png`.

    The OBJ references the MTL (`mtllib <stem>.mtl`) and the MTL references
    the PNG (`map_Kd <stem>.png`) by relative file name, so the files can be
    moved together. The material is named `<stem>`, with white Ka/Kd and no
    specular. The output directory is created if missing; existing files are
    overwritten.

    Args:
      path: str or os.PathLike ending in .obj; its file name must not contain
        whitespace (OBJ/MTL references cannot hold it).
      vertices: (V, 3) float, finite.
      faces: (F, 3) integer in [0, V).
      uv_coords: optional (T, 2) float in [0, 1], v up.
      uv_faces: optional (F, 3) integer in [0, T); vertices are split at UV
        seams (see the module docstring). If omitted, uv_coords must have V
        rows (one UV per vertex).
      texture: optional (H, W, 3|4) uint8 or float in [0, 1]; needs uv_coords.
      normals: optional (V, 3) float per-vertex normals, written as given.
    Returns:
      list[pathlib.Path]: the files written: [obj] or [obj, mtl] or [obj, mtl, png].
    """
    import trimesh
    from trimesh.visual.material import SimpleMaterial

    p = _check_path(path, ".obj")
    if any(ch.isspace() for ch in p.name):
        raise ValueError(f"path: expected an OBJ file name without whitespace (MTL/texture references), found {p.name!r}")
    v = _check_vertices(vertices)
    f = _check_index_array("faces", faces, v.shape[0], "V = len(vertices)")
    tex = _check_texture(texture) if texture is not None else None
    uv, uvf = _check_uv(uv_coords, uv_faces, f, tex, v.shape[0])
    n = _check_float_array("normals", normals, 3, rows=v.shape[0], rows_desc="V") if normals is not None else None

    stem = p.stem
    material = None
    if uv is not None:
        material = SimpleMaterial(
            image=_pil_image(tex) if tex is not None else None,
            ambient=[255, 255, 255, 255],
            diffuse=[255, 255, 255, 255],
            specular=[0, 0, 0, 255],
            glossiness=1.0,
            name=stem,
        )
    mesh = _build_trimesh(v, f, uv, uvf, material=material, normals=n)
    text, files = trimesh.exchange.obj.export_obj(
        mesh,
        include_normals=n is not None,
        include_color=False,
        include_texture=uv is not None,
        return_texture=True,
        write_texture=False,
        digits=_OBJ_DIGITS,
        mtl_name=f"{stem}.mtl",
        header="face3d-jax (trimesh)",
    )

    _prepare_dir(p)
    p.write_text(text, encoding="utf-8")
    written = [p]
    # files: {relative name: bytes}, e.g. {"<stem>.png": ..., "<stem>.mtl": ...}
    expected = {f"{stem}.mtl"} | ({f"{stem}.png"} if tex is not None else set())
    if uv is not None and set(files) != expected:
        raise RuntimeError(f"trimesh produced unexpected OBJ side files {sorted(files)}, expected {sorted(expected)}")
    for name in sorted(files, key=lambda s: (not s.endswith(".mtl"), s)):
        out = p.parent / name
        out.write_bytes(files[name])
        written.append(out)
    return written


def export_glb(path, vertices, faces, uv_coords=None, uv_faces=None, texture=None, normals=None):
    """Write a binary glTF 2.0 file (.glb) with UVs and the texture embedded.

    The texture becomes the PBR metallic-roughness material's baseColorTexture
    (embedded as PNG; baseColorFactor white, metallic 0, roughness 1). UVs are
    stored as TEXCOORD_0; trimesh flips v into glTF's top-left convention.

    Args:
      path: str or os.PathLike ending in .glb.
      vertices: (V, 3) float, finite (stored as float32).
      faces: (F, 3) integer in [0, V).
      uv_coords: optional (T, 2) float in [0, 1], v up.
      uv_faces: optional (F, 3) integer in [0, T); vertices are split at UV
        seams. If omitted, uv_coords must have V rows.
      texture: optional (H, W, 3|4) uint8 or float in [0, 1]; needs uv_coords.
      normals: optional (V, 3) float per-vertex normals (unit length is
        enforced by the exporter).
    Returns:
      list[pathlib.Path]: [path].
    """
    import trimesh
    from trimesh.visual.material import PBRMaterial

    p = _check_path(path, ".glb")
    v = _check_vertices(vertices)
    f = _check_index_array("faces", faces, v.shape[0], "V = len(vertices)")
    tex = _check_texture(texture) if texture is not None else None
    uv, uvf = _check_uv(uv_coords, uv_faces, f, tex, v.shape[0])
    n = _check_float_array("normals", normals, 3, rows=v.shape[0], rows_desc="V") if normals is not None else None

    material = None
    if uv is not None:
        material = PBRMaterial(
            name=p.stem,
            baseColorTexture=_pil_image(tex) if tex is not None else None,
            baseColorFactor=[255, 255, 255, 255],
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
    mesh = _build_trimesh(v, f, uv, uvf, material=material, normals=n, name=p.stem)
    data = trimesh.exchange.gltf.export_glb(mesh, include_normals=n is not None)
    _prepare_dir(p)
    p.write_bytes(data)
    return [p]


def export_ply(path, vertices, faces, vertex_colors=None, normals=None):
    """Write a binary (little-endian) PLY; vertex order is the input's.

    Args:
      path: str or os.PathLike ending in .ply.
      vertices: (V, 3) float, finite (stored as float32).
      faces: (F, 3) integer in [0, V).
      vertex_colors: optional (V, 3) or (V, 4) uint8 or float in [0, 1]
        (stored as RGBA uint8; alpha 255 when not given).
      normals: optional (V, 3) float per-vertex normals (stored as float32).
    Returns:
      list[pathlib.Path]: [path].
    """
    import trimesh

    p = _check_path(path, ".ply")
    v = _check_vertices(vertices)
    f = _check_index_array("faces", faces, v.shape[0], "V = len(vertices)")
    colors = _check_vertex_colors(vertex_colors, v.shape[0]) if vertex_colors is not None else None
    n = _check_float_array("normals", normals, 3, rows=v.shape[0], rows_desc="V") if normals is not None else None

    mesh = _build_trimesh(v, f, normals=n, colors=colors)
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=n is not None)
    _prepare_dir(p)
    p.write_bytes(data)
    return [p]


_EXPORTERS = {".obj": export_obj, ".glb": export_glb, ".ply": export_ply}
_OPTIONS = {
    ".obj": ("uv_coords", "uv_faces", "texture", "normals"),
    ".glb": ("uv_coords", "uv_faces", "texture", "normals"),
    ".ply": ("vertex_colors", "normals"),
}


def export_mesh(path, vertices, faces, **options):
    """Export a mesh, choosing the format from the file suffix (.obj, .glb, .ply).

    Args:
      path: str or os.PathLike ending in one of SUPPORTED_SUFFIXES (any case).
      vertices: (V, 3) float.
      faces: (F, 3) integer.
      **options: passed to the format's exporter; .obj and .glb take
        uv_coords, uv_faces, texture, normals; .ply takes vertex_colors, normals.
        None values are ignored.
    Returns:
      list[pathlib.Path]: the files written.
    Raises:
      ValueError: unknown suffix, an option the format does not support, or
        invalid arrays.
    """
    p = Path(os.fspath(path))
    suffix = p.suffix.lower()
    if suffix not in _EXPORTERS:
        raise ValueError(
            f"path: unsupported file type {suffix or '(no suffix)'!r} for {str(p)!r}; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    options = {k: val for k, val in options.items() if val is not None}
    unsupported = sorted(set(options) - set(_OPTIONS[suffix]))
    if unsupported:
        raise ValueError(
            f"{unsupported[0]}: not supported when exporting {suffix}; "
            f"expected only {', '.join(_OPTIONS[suffix])}, found {', '.join(unsupported)}"
        )
    return _EXPORTERS[suffix](p, vertices, faces, **options)
