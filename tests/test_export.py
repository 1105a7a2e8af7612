"""Tests of face3d_jax.export: write OBJ/GLB/PLY, read back with trimesh (and pygltflib)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from face3d_jax import export as E


# --------------------------------------------------------------------------
# a small UV-mapped cylinder with a seam
# --------------------------------------------------------------------------


def _cylinder(segments=8, rings=3, seed=0):
    """Open cylinder; the column at angle 0 is shared by the first and last
    quads but has u = 0 on one side and u = 1 on the other (a UV seam).

    UV rows are shuffled so that uv_faces differs from faces everywhere.
    """
    ang = 2.0 * np.pi * np.arange(segments) / segments
    z = np.linspace(0.0, 1.0, rings)
    vertices = np.array([[np.cos(a), np.sin(a), zz] for zz in z for a in ang], dtype=np.float64)
    vertices *= np.array([0.1, 0.12, 0.15])  # face-sized, not unit
    uv_grid = np.array(
        [[i / segments, 0.05 + 0.9 * r / (rings - 1)] for r in range(rings) for i in range(segments + 1)]
    )
    faces, uv_faces = [], []
    for r in range(rings - 1):
        for i in range(segments):
            j = (i + 1) % segments
            a, b, c, d = r * segments + i, r * segments + j, (r + 1) * segments + j, (r + 1) * segments + i
            ta, tb = r * (segments + 1) + i, r * (segments + 1) + i + 1
            tc, td = (r + 1) * (segments + 1) + i + 1, (r + 1) * (segments + 1) + i
            faces += [[a, b, c], [a, c, d]]
            uv_faces += [[ta, tb, tc], [ta, tc, td]]
    faces, uv_faces = np.array(faces), np.array(uv_faces)
    perm = np.random.default_rng(seed).permutation(len(uv_grid))
    inv = np.argsort(perm)
    uv_coords = uv_grid[perm]
    uv_faces = inv[uv_faces]
    return vertices, faces, uv_coords, uv_faces


def _texture(size=16, channels=3):
    ramp = (np.arange(size) * (256 // size)).astype(np.uint8)
    tex = np.zeros((size, size, channels), np.uint8)
    tex[..., 0] = ramp[None, :]
    tex[..., 1] = ramp[:, None]
    tex[..., 2] = 200
    if channels == 4:
        tex[..., 3] = 255 - ramp[:, None]
    return tex


@pytest.fixture(scope="module")
def mesh():
    v, f, uv, uvf = _cylinder()
    # the fixture really has a seam: some vertex carries two different UVs
    pairs = {(int(a), int(b)) for a, b in zip(f.ravel(), uvf.ravel())}
    assert len(pairs) > len(v)
    return v, f, uv, uvf


def _canonical(pos, uv=None):
    """Sort triangles (F,3,3) [and their corner UVs (F,3,2)] into a canonical order.

    Each triangle is cyclically rotated (orientation kept) so its smallest corner
    comes first; triangles are then sorted by their rounded coordinates.
    """
    pos = np.asarray(pos, np.float64)
    key = np.round(pos, 5)
    rot = np.array([min(range(3), key=lambda k, t=t: tuple(t[k])) for t in key])
    idx = (rot[:, None] + np.arange(3)[None, :]) % 3
    take = np.arange(len(pos))[:, None]
    pos, key = pos[take, idx], key[take, idx]
    order = np.lexsort(key.reshape(len(key), -1).T[::-1])
    assert len({tuple(k) for k in key.reshape(len(key), -1)}) == len(key), "duplicate triangles"
    if uv is None:
        return pos[order], None
    return pos[order], np.asarray(uv, np.float64)[take, idx][order]


def _assert_same_triangles(got_v, got_f, want_v, want_f, got_uv=None, want_uv=None, atol=1e-6, uv_atol=1e-6):
    assert len(got_f) == len(want_f)
    gp, gu = _canonical(got_v[got_f], None if got_uv is None else got_uv[got_f])
    wp, wu = _canonical(want_v[want_f], want_uv)
    np.testing.assert_allclose(gp, wp, atol=atol, rtol=0)
    if want_uv is not None:
        np.testing.assert_allclose(gu, wu, atol=uv_atol, rtol=0)


def _load_single(path, **kw):
    loaded = trimesh.load(str(path), process=False, **kw)
    if isinstance(loaded, trimesh.Scene):
        assert len(loaded.geometry) == 1
        loaded = next(iter(loaded.geometry.values()))
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


# --------------------------------------------------------------------------
# OBJ
# --------------------------------------------------------------------------


@pytest.mark.parametrize("float_texture", [False, True])
def test_obj_textured_roundtrip(tmp_path, mesh, float_texture):
    v, f, uv, uvf = mesh
    tex = _texture()
    tex_in = tex.astype(np.float32) / 255.0 if float_texture else tex
    out = tmp_path / "new" / "dir" / "face.obj"  # directory created on demand
    written = E.export_obj(out, v, f, uv_coords=uv, uv_faces=uvf, texture=tex_in)
    assert written == [out, out.with_suffix(".mtl"), out.with_suffix(".png")]
    assert all(p.is_file() for p in written)

    obj_text = out.read_text()
    mtl_text = out.with_suffix(".mtl").read_text()
    assert "mtllib face.mtl" in obj_text.splitlines()
    assert "map_Kd face.png" in mtl_text.splitlines()
    assert "/" not in mtl_text.split("map_Kd", 1)[1].splitlines()[0]  # relative name

    # the PNG on disk is the texture, pixel for pixel
    np.testing.assert_array_equal(np.asarray(Image.open(out.with_suffix(".png"))), tex)

    m = _load_single(out, maintain_order=True)
    # split at seams: one vertex per distinct (vertex, uv) pair, nothing more
    assert len(m.vertices) == len({(a, b) for a, b in zip(f.ravel(), uvf.ravel())})
    _assert_same_triangles(m.vertices, m.faces, v, f, m.visual.uv, uv[uvf], atol=1e-8, uv_atol=1e-8)
    # trimesh followed mtllib -> map_Kd and found the same pixels
    img = m.visual.material.image
    assert img is not None
    np.testing.assert_array_equal(np.asarray(img.convert("RGB")), tex)


def test_obj_uv_without_texture_and_rgba(tmp_path, mesh):
    v, f, uv, uvf = mesh
    normals = v * np.array([1.0, 1.0, 0.0])
    written = E.export_obj(tmp_path / "plain.obj", v, f, uv, uvf, normals=normals)
    assert [p.name for p in written] == ["plain.obj", "plain.mtl"]
    assert "map_Kd" not in (tmp_path / "plain.mtl").read_text()
    m = _load_single(tmp_path / "plain.obj", maintain_order=True)
    _assert_same_triangles(m.vertices, m.faces, v, f, m.visual.uv, uv[uvf], atol=1e-8, uv_atol=1e-8)
    # normals follow their vertex through the seam split (compared per corner)
    _assert_same_triangles(m.vertices, m.faces, v, f, m.vertex_normals, normals[f], atol=1e-8, uv_atol=1e-8)

    rgba = _texture(channels=4)
    E.export_obj(tmp_path / "rgba.obj", v, f, uv, uvf, texture=rgba)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgba.png")), rgba)


def test_obj_without_uv_keeps_vertex_order(tmp_path, mesh):
    v, f, _, _ = mesh
    normals = v * np.array([1.0, 1.0, 0.0])
    written = E.export_obj(tmp_path / "geo.obj", v, f, normals=normals)
    assert written == [tmp_path / "geo.obj"]
    assert "mtllib" not in (tmp_path / "geo.obj").read_text()
    m = _load_single(tmp_path / "geo.obj", maintain_order=True)
    np.testing.assert_allclose(m.vertices, v, atol=1e-9, rtol=0)
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_allclose(m.vertex_normals, normals, atol=1e-9, rtol=0)


def test_obj_per_vertex_uv(tmp_path, mesh):
    """uv_faces omitted: one UV per vertex, no splitting, order kept."""
    v, f, _, _ = mesh
    uv = (v[:, :2] - v[:, :2].min(0)) / np.ptp(v[:, :2], axis=0)
    E.export_obj(tmp_path / "pv.obj", v, f, uv_coords=uv, texture=_texture())
    m = _load_single(tmp_path / "pv.obj", maintain_order=True)
    np.testing.assert_allclose(m.vertices, v, atol=1e-9, rtol=0)
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_allclose(m.visual.uv, uv, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------
# GLB
# --------------------------------------------------------------------------


def test_glb_textured_roundtrip(tmp_path, mesh):
    pygltflib = pytest.importorskip("pygltflib")
    v, f, uv, uvf = mesh
    tex = _texture()
    out = tmp_path / "sub" / "face.glb"
    assert E.export_glb(out, v, f, uv_coords=uv, uv_faces=uvf, texture=tex) == [out]
    assert out.read_bytes()[:4] == b"glTF"

    m = _load_single(out)
    # float32 storage and trimesh's v -> 1 - v flip cost a few ulps
    _assert_same_triangles(m.vertices, m.faces, v, f, m.visual.uv, uv[uvf], atol=1e-6, uv_atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.visual.material.baseColorTexture.convert("RGB")), tex)

    g = pygltflib.GLTF2().load(str(out))
    prim = g.meshes[0].primitives[0]
    assert prim.attributes.TEXCOORD_0 is not None
    assert g.accessors[prim.attributes.TEXCOORD_0].type == "VEC2"
    assert g.accessors[prim.attributes.POSITION].count == len(m.vertices)
    # the material's base colour texture is an image embedded in the binary chunk
    mat = g.materials[prim.material]
    tex_idx = mat.pbrMetallicRoughness.baseColorTexture.index
    image = g.images[g.textures[tex_idx].source]
    assert image.uri is None and image.bufferView is not None
    assert image.mimeType == "image/png"
    view = g.bufferViews[image.bufferView]
    blob = g.binary_blob()[view.byteOffset or 0 : (view.byteOffset or 0) + view.byteLength]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")), tex)


def test_glb_without_uv_keeps_vertex_order(tmp_path, mesh):
    v, f, _, _ = mesh
    E.export_glb(tmp_path / "geo.glb", v, f)
    m = _load_single(tmp_path / "geo.glb")
    np.testing.assert_array_equal(m.vertices, v.astype(np.float32))
    np.testing.assert_array_equal(m.faces, f)


# --------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------


@pytest.mark.parametrize("float_colors", [False, True])
def test_ply_roundtrip(tmp_path, mesh, float_colors):
    v, f, _, _ = mesh
    colors = np.random.default_rng(1).integers(0, 256, size=(len(v), 3)).astype(np.uint8)
    colors_in = colors / 255.0 if float_colors else colors
    out = tmp_path / "face.ply"
    assert E.export_ply(out, v, f, vertex_colors=colors_in) == [out]
    assert b"format binary_little_endian 1.0" in out.read_bytes()[:200]
    m = _load_single(out)
    np.testing.assert_array_equal(m.vertices, v.astype(np.float32))  # exact order
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], colors)
    _assert_same_triangles(m.vertices, m.faces, v, f)


def test_ply_without_colors(tmp_path, mesh):
    v, f, _, _ = mesh
    E.export_ply(tmp_path / "g.ply", v, f)
    m = _load_single(tmp_path / "g.ply")
    np.testing.assert_array_equal(m.vertices, v.astype(np.float32))
    np.testing.assert_array_equal(m.faces, f)


# --------------------------------------------------------------------------
# dispatch, helpers, inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply", ".OBJ"])
def test_export_mesh_dispatch(tmp_path, mesh, suffix):
    v, f, uv, uvf = mesh
    out = tmp_path / f"m{suffix}"
    kw = {} if suffix == ".ply" else dict(uv_coords=uv, uv_faces=uvf, texture=_texture())
    written = E.export_mesh(out, v, f, **kw)
    assert written[0] == out and out.is_file()
    m = _load_single(out)
    _assert_same_triangles(m.vertices, m.faces, v, f, atol=1e-6)


def test_export_mesh_rejects_unknown_suffix_and_options(tmp_path, mesh):
    v, f, _, _ = mesh
    with pytest.raises(ValueError) as exc:
        E.export_mesh(tmp_path / "m.stl", v, f)
    msg = str(exc.value)
    assert "\n" not in msg and "m.stl" in msg
    assert all(s in msg for s in (".obj", ".glb", ".ply"))
    with pytest.raises(ValueError, match=r"^texture: .*\.ply"):
        E.export_mesh(tmp_path / "m.ply", v, f, texture=_texture())
    assert not list(tmp_path.iterdir())


def test_split_uv_seams(mesh):
    v, f, uv, uvf = mesh
    vidx, tidx, nf = E.split_uv_seams(f, uvf)
    np.testing.assert_array_equal(vidx[nf], f)
    np.testing.assert_array_equal(tidx[nf], uvf)
    assert np.all(np.diff(vidx) >= 0)
    assert len(set(zip(vidx.tolist(), tidx.tolist()))) == len(vidx)


def test_accepts_jax_arrays(tmp_path, mesh):
    jnp = pytest.importorskip("jax.numpy")
    v, f, uv, uvf = mesh
    E.export_obj(tmp_path / "j.obj", jnp.asarray(v, jnp.float32), jnp.asarray(f), jnp.asarray(uv),
                 jnp.asarray(uvf), jnp.asarray(_texture()))
    m = _load_single(tmp_path / "j.obj", maintain_order=True)
    _assert_same_triangles(m.vertices, m.faces, v, f, m.visual.uv, uv[uvf], atol=1e-6)


def test_import_does_not_pull_jax():
    code = "import sys, face3d_jax.export; sys.exit('jax' in sys.modules or 'trimesh' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _bad_cases():
    v, f, uv, uvf = _cylinder()
    tex = _texture()
    nan_v = v.copy()
    nan_v[3, 1] = np.nan
    big_f = f.copy()
    big_f[0, 0] = len(v)
    neg_uvf = uvf.copy()
    neg_uvf[2, 1] = -1
    ok = dict(vertices=v, faces=f, uv_coords=uv, uv_faces=uvf, texture=tex)
    cases = [
        ("vertices", dict(vertices=v[:, :2]), "(V, 3)"),
        ("vertices", dict(vertices=nan_v), "NaN"),
        ("faces", dict(faces=np.concatenate([f, f[:, :1]], 1)), "(F, 3)"),
        ("faces", dict(faces=f.astype(np.float32)), "integer"),
        ("faces", dict(faces=big_f), f"[0, {len(v) - 1}]"),
        ("uv_coords", dict(uv_coords=uv[:, :1]), "(T, 2)"),
        ("uv_faces", dict(uv_faces=uvf[:-1]), f"({len(f)}, 3)"),
        ("uv_faces", dict(uv_faces=neg_uvf), "[-1,"),
        ("uv_faces", dict(uv_coords=None, texture=None), "uv_coords"),
        ("uv_faces", dict(uv_faces=None), "uv_coords"),
        ("texture", dict(texture=tex[..., :2]), "(H, W, 3)"),
        ("texture", dict(texture=tex[..., 0]), "(H, W, 3)"),
        ("texture", dict(texture=tex.astype(np.float32) * 2), "[0, 1]"),
        ("texture", dict(texture=tex.astype(np.int32)), "uint8"),
        ("texture", dict(uv_coords=None, uv_faces=None), "uv_coords"),
        ("normals", dict(normals=v[:-1]), "(V, 3)"),
    ]
    return [pytest.param(name, {**ok, **change}, hint, id=f"{name}-{i}") for i, (name, change, hint) in enumerate(cases)]


@pytest.mark.parametrize("fmt", [".obj", ".glb"])
@pytest.mark.parametrize("name,kwargs,hint", _bad_cases())
def test_bad_inputs_name_the_argument(tmp_path, fmt, name, kwargs, hint):
    fn = E.export_obj if fmt == ".obj" else E.export_glb
    with pytest.raises(ValueError) as exc:
        fn(tmp_path / f"bad{fmt}", **kwargs)
    msg = str(exc.value)
    assert msg.startswith(f"{name}: "), msg
    assert "\n" not in msg
    assert hint in msg, msg
    assert not list(tmp_path.iterdir())  # nothing written on bad input


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(vertex_colors=np.zeros((5, 3), np.uint8)), "vertex_colors"),
        (dict(vertex_colors=np.full((24, 3), 1.5)), "vertex_colors"),
        (dict(faces=np.zeros((0, 3), int)), "faces"),
    ],
)
def test_bad_ply_inputs(tmp_path, mesh, kwargs, name):
    v, f, _, _ = mesh
    kw = {"vertices": v, "faces": f, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        E.export_ply(tmp_path / "bad.ply", **kw)


def test_bad_paths(tmp_path, mesh):
    v, f, _, _ = mesh
    with pytest.raises(ValueError, match=r"^path: .*\.obj"):
        E.export_obj(tmp_path / "x.glb", v, f)
    with pytest.raises(ValueError, match=r"^path: .*whitespace"):
        E.export_obj(tmp_path / "my face.obj", v, f)
