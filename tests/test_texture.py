"""Pseudo-ground-truth albedo (face3d_jax/texture.py, Sec. 3.1-3.2): each step
on inputs whose answer is known, and the whole chain on faces rendered by our
renderer from a known albedo and light."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax import texture as T
from face3d_jax.flame.forward import flame_forward
from face3d_jax.render import shading
from face3d_jax.render.renderer import render
from face3d_jax.render.views import face_camera

SIZE = 64


@pytest.fixture(scope="module")
def uvr(default_flame):
    return T.uv_raster(default_flame.uv_coords, default_flame.uv_faces, SIZE)


def test_uv_raster_points_back_at_each_texel(default_flame, uvr):
    # Interpolating the UVs themselves with the texel's barycentrics gives the
    # texel centre (row 0 at v = 1).
    uv = jnp.asarray(default_flame.uv_coords)[None]
    got = np.asarray(T.uv_interpolate(uvr, uv, default_flame.uv_faces)[0])
    inside = np.asarray(uvr.inside)
    rows, cols = np.nonzero(inside)
    want = np.stack([(cols + 0.5) / SIZE, 1.0 - (rows + 0.5) / SIZE], axis=1)
    np.testing.assert_allclose(got[rows, cols], want, atol=1e-5)
    assert 0.3 < inside.mean() < 1.0


def test_flip_complete_keeps_the_seen_side_and_mirrors_the_rest():
    tex = np.zeros((1, 4, 4, 1), np.float32)
    conf = np.zeros((1, 4, 4), np.float32)
    tex[0, :, :2, 0], conf[0, :, :2] = 5.0, 1.0        # left half seen
    tex[0, 0, 2, 0], conf[0, 0, 2] = 7.0, 0.25         # a weakly seen texel on the right
    out, out_conf, alpha = T.flip_complete(jnp.asarray(tex), jnp.asarray(conf))
    out = np.asarray(out)[0, ..., 0]
    np.testing.assert_allclose(out[:, :2], 5.0)        # seen and mirror unseen there? kept
    np.testing.assert_allclose(out[1:, 2:], 5.0)       # unseen: from the mirror
    np.testing.assert_allclose(out[0, 2], 0.25 * 7.0 + 0.75 * 5.0)  # blended by confidence
    assert np.all(np.asarray(out_conf) > 0) and np.asarray(alpha)[0, 1, 3] == 0


def test_push_pull_fills_every_hole_and_keeps_known_texels():
    rng = np.random.default_rng(0)
    tex = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    known = (rng.uniform(size=(2, 16, 16)) > 0.8).astype(np.float32)
    filled = np.asarray(T.push_pull_fill(jnp.asarray(tex * known[..., None]), jnp.asarray(known)))
    np.testing.assert_allclose(filled[known > 0], tex[known > 0], rtol=1e-6)
    assert np.all(np.isfinite(filled)) and filled.min() >= 0 and filled.max() <= 1
    # A constant colour stays constant.
    const = np.asarray(T.push_pull_fill(jnp.full((1, 8, 8, 3), 0.3) * known[:1, :8, :8, None],
                                        jnp.asarray(known[:1, :8, :8])))
    np.testing.assert_allclose(const, 0.3, rtol=1e-6)


def random_normals(n, seed=0, hemisphere=False):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    if hemisphere:
        v[:, 2] = np.abs(v[:, 2])
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_sh_light_and_albedo_recovered_from_a_shaded_texture():
    # Normals all over the sphere, a constant albedo: T = A S(N) exactly, so
    # the monochromatic light is recovered up to the albedo's luminance.
    normals = random_normals(32 * 32).reshape(1, 32, 32, 3)
    light = np.array([2.0, 0.3, -0.2, 0.5, 0.1, 0.0, -0.1, 0.2, 0.05], np.float32)
    s = np.asarray(shading.sh_basis(jnp.asarray(normals))) @ light
    albedo = np.array([0.8, 0.6, 0.5], np.float32)
    tex = jnp.asarray(albedo * s[..., None])
    weight = jnp.ones((1, 32, 32))
    luma = float(albedo @ np.array([0.299, 0.587, 0.114]))
    got = np.asarray(T.estimate_sh_light(tex, jnp.asarray(normals), weight, ridge=0.0))[0]
    np.testing.assert_allclose(got, luma * light, rtol=1e-4, atol=1e-5)
    # With the albedo's level given, A comes back exactly.
    a, shade, sh = T.albedo_from_texture(tex, jnp.asarray(normals), weight, ridge=0.0,
                                         albedo_level=luma, min_shading=1e-6)
    keep = s[0] > 0.05
    np.testing.assert_allclose(np.asarray(a)[0][keep], np.broadcast_to(albedo, (keep.sum(), 3)),
                               rtol=1e-3)
    np.testing.assert_allclose(np.asarray(sh)[0, :, 0], light, rtol=1e-3, atol=1e-4)


def psnr(a, b, mask):
    mse = np.mean((np.asarray(a) - np.asarray(b))[mask] ** 2)
    return 10 * np.log10(1.0 / mse)


def test_pseudo_ground_truth_albedo_of_a_rendered_face(default_flame, uvr):
    # A turned face (yaw 35 degrees), a mirror-symmetric albedo with structure,
    # light from the side and above: the extracted albedo must beat the
    # shaded texture it came from, on the seen and on the mirrored side.
    m = default_flame
    zeros = lambda n: jnp.zeros((1, n))  # noqa: E731
    out = flame_forward(m, zeros(10), zeros(10), jnp.asarray([[0.0, np.radians(35), 0.0]]),
                        zeros(3), zeros(3), zeros(6))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    sym = np.abs(cols - 0.5)
    albedo = np.stack([0.65 + 0.15 * np.cos(12 * sym), 0.5 + 0.1 * np.sin(7 * rows),
                       0.4 + 0.05 * np.cos(9 * rows * sym)], -1)[None].astype(np.float32)
    light = np.zeros((1, 9, 3), np.float32)
    light[0, 0], light[0, 1], light[0, 2], light[0, 3] = 2.4, 0.5, 0.3, 0.4
    cam = face_camera(1)
    image = render(out.vertices, m.faces, m.uv_coords, m.uv_faces, jnp.asarray(albedo), cam,
                   (128, 128), sh_coeffs=jnp.asarray(light)).image
    result = jax.jit(lambda img, v: T.pseudo_ground_truth_albedo(
        img, v, m.faces, m.uv_coords, m.uv_faces, cam, size=SIZE, uvr=uvr))(image, out.vertices)
    inside = np.asarray(uvr.inside)
    conf = np.asarray(result.confidence[0])
    seen = np.asarray(T.extract_texture(image, out.vertices, m.faces, cam, uvr).confidence[0]) > 0
    mirrored = inside & (conf > 0) & ~seen
    assert seen.sum() > 300 and mirrored.sum() > 50
    for region in (seen, mirrored):
        gained = psnr(result.albedo[0], albedo[0], region) - psnr(result.texture[0], albedo[0],
                                                                   region)
        assert gained > 3.0, gained
    assert psnr(result.albedo[0], albedo[0], seen) > 20.0
    filled = np.asarray(result.albedo[0])
    assert np.all(np.isfinite(filled)) and filled[inside].min() > 0.0  # no holes left


def test_extract_albedo_from_a_real_photograph(tmp_path):
    # skimage's astronaut: dlib's landmarks, the landmark fit, the extraction.
    skimage_data = pytest.importorskip("skimage.data")
    from face3d_jax.extract_albedo import extract_albedo
    from face3d_jax.faces.detect import FaceTools
    from face3d_jax.flame import default_model

    image = skimage_data.astronaut()
    face = FaceTools.load().detect(image)[0]
    model = default_model()
    result, fit, crop = extract_albedo(image, face.landmarks, model, size=64, crop_size=192,
                                       fit_steps=150)
    from face3d_jax.faces.crop import crop_matrix, transform_points
    target = transform_points(face.landmarks, crop_matrix(face.landmarks, 192)) + 0.5
    assert np.linalg.norm(np.asarray(fit.landmarks2d[0]) - target, axis=-1).mean() < 4.0
    albedo = np.asarray(result.albedo[0])
    inside = np.asarray(T.uv_raster(model.uv_coords, model.uv_faces, 64).inside)
    assert np.all(np.isfinite(albedo)) and albedo.min() >= 0 and albedo.max() <= 1
    # Complete: every texel of the layout has a colour (the photo's dark suit
    # and hair aside, nearly all are far from black).
    assert (albedo[inside].max(axis=-1) > 0.05).mean() > 0.95
    # The seen face is mostly skin: red above blue on average.
    seen = np.asarray(result.confidence[0]) > 0.5
    assert albedo[seen][:, 0].mean() > albedo[seen][:, 2].mean()
