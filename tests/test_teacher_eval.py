"""Metrics (face3d_jax/metrics.py) and held-out teacher samples (face3d_jax/teacher/held_out.py).

References: scipy's Kabsch (`Rotation.align_vectors`) and closed forms for the
mesh error; FLAME's forward pass with explicit zeros; numpy's PSNR and PIL's
bilinear resize; the template's geometry for the face mask; and, for the
held-out set, the dataset's own pipeline (`TeacherSource.render`,
`faces.crop_matrix`, `faces.warp_crop`) with scipy's `map_coordinates` as an
independent bilinear warp. A tiny world (64 px images, 32^2 maps) keeps the
file fast: two renderer compilations dominate it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial.transform import Rotation

from face3d_jax import metrics, teacher
from face3d_jax import teacher as tt
from face3d_jax.data.dataset import GenerateConfig
from face3d_jax.data.dataset_sources import TeacherSource
from face3d_jax.faces.crop import crop_matrix, warp_crop
from face3d_jax.flame import flame_forward
from face3d_jax.flame.uv import bake_uv, face_regions
from face3d_jax.teacher.params import readout
from face3d_jax.teacher.scene import background_image

CFG = GenerateConfig(resolution=64, teacher_albedo_size=32, teacher_calibration=256)
COUNT, BATCH, CROP = 5, 4, 48


def _mesh(default_flame, batch, seed):
    """(batch, V / 4, 3) float64 template copies with random smooth shapes."""
    rng = np.random.default_rng(seed)
    dirs = np.asarray(default_flame.shapedirs[::4, :, :20], np.float64)
    coeffs = rng.standard_normal((batch, 20))
    return np.asarray(default_flame.v_template[::4], np.float64) + np.einsum(
        "vck,bk->bvc", dirs, coeffs)


# ---------------------------------------------------------------- meshes


def test_rigid_align_recovers_a_rigid_motion(default_flame):
    src = _mesh(default_flame, 3, 0)
    rot = Rotation.random(3, random_state=1)
    shift = np.random.default_rng(2).uniform(-0.2, 0.2, (3, 1, 3))
    target = np.stack([rot[i].apply(src[i]) for i in range(3)]) + shift
    aligned = np.asarray(metrics.rigid_align(jnp.asarray(src, jnp.float32),
                                        jnp.asarray(target, jnp.float32)))
    assert np.abs(aligned - target).max() < 1e-4  # metres
    err = np.asarray(metrics.mesh_error_mm(src, target))
    assert err.shape == (3,) and np.all(err < 0.05)


def test_rigid_align_matches_scipy_kabsch_and_never_reflects(default_flame):
    src = _mesh(default_flame, 2, 3)
    rng = np.random.default_rng(4)
    target = _mesh(default_flame, 2, 5) + 0.003 * rng.standard_normal(src.shape)
    target[1, :, 0] *= -1.0  # a mirror image: the best proper rotation, not the reflection
    aligned = np.asarray(metrics.rigid_align(src, target))
    err = np.asarray(metrics.mesh_error_mm(src, target))
    for i in range(2):
        xs, xt = src[i] - src[i].mean(0), target[i] - target[i].mean(0)
        rot, _ = Rotation.align_vectors(xt, xs)  # proper rotation taking xs onto xt
        ref = rot.apply(xs) + target[i].mean(0)
        assert np.abs(aligned[i] - ref).max() < 2e-5
        ref_mm = 1000.0 * np.linalg.norm(ref - target[i], axis=1).mean()
        assert err[i] == pytest.approx(ref_mm, rel=1e-4)
    # The result is a rigid motion of the source: pairwise distances kept.
    d = lambda x: np.linalg.norm(x[:, None, :50] - x[:, 50:100, None], axis=-1)  # noqa: E731
    assert np.abs(d(aligned) - d(src)).max() < 1e-5


def test_mesh_error_of_a_scaled_copy_is_closed_form(default_flame):
    # pred = centroid + (1 + e)(x - centroid), then moved rigidly: the best
    # rigid alignment undoes the motion only, leaving e |x - centroid| per vertex.
    truth = _mesh(default_flame, 2, 6)
    centre = truth.mean(1, keepdims=True)
    e = np.array([0.01, 0.03])[:, None, None]
    rot = Rotation.from_rotvec([[0.3, -0.2, 0.5], [-1.0, 0.4, 0.1]])
    scaled = centre + (1.0 + e) * (truth - centre)
    pred = np.stack([rot[i].apply(scaled[i]) for i in range(2)]) + np.array([0.05, -0.1, 0.3])
    expected = 1000.0 * e[:, 0, 0] * np.linalg.norm(truth - centre, axis=-1).mean(1)
    np.testing.assert_allclose(np.asarray(metrics.mesh_error_mm(pred, truth)), expected, rtol=1e-3)


def test_scaled_alignment_undoes_a_similarity_and_matches_least_squares(default_flame):
    truth = _mesh(default_flame, 2, 6)
    centre = truth.mean(1, keepdims=True)
    rot = Rotation.from_rotvec([[0.3, -0.2, 0.5], [-1.0, 0.4, 0.1]])
    scaled = centre + np.array([0.9, 1.07])[:, None, None] * (truth - centre)
    pred = np.stack([rot[i].apply(scaled[i]) for i in range(2)]) + np.array([0.05, -0.1, 0.3])
    assert np.all(np.asarray(metrics.mesh_error_mm(pred, truth, scale=True)) < 1e-3)
    assert np.all(np.asarray(metrics.mesh_error_mm(pred, truth)) > 1.0)
    # With noise: for the best rotation (scipy), the least-squares scale is
    # <R xs, xt> / |xs|^2; the aligned points and the error match it.
    noisy = truth + 0.002 * np.random.default_rng(8).standard_normal(truth.shape)
    aligned = np.asarray(metrics.rigid_align(pred, noisy, scale=True))
    err = np.asarray(metrics.mesh_error_mm(pred, noisy, scale=True))
    for i in range(2):
        xs, xt = pred[i] - pred[i].mean(0), noisy[i] - noisy[i].mean(0)
        r, _ = Rotation.align_vectors(xt, xs)
        c = np.sum(r.apply(xs) * xt) / np.sum(xs * xs)
        ref = c * r.apply(xs) + noisy[i].mean(0)
        assert np.abs(aligned[i] - ref).max() < 2e-5
        assert err[i] == pytest.approx(1000.0 * np.linalg.norm(ref - noisy[i], axis=1).mean(),
                                       rel=1e-4)
        assert err[i] < np.asarray(metrics.mesh_error_mm(pred, noisy))[i]


def test_mesh_error_rejects_mismatched_meshes():
    with pytest.raises(ValueError, match="rigid_align"):
        metrics.mesh_error_mm(np.zeros((2, 10, 3)), np.zeros((2, 11, 3)))


def _neutral_meshes(default_flame, batch, seed):
    """(batch, V, 3) float32 neutral FLAME meshes of random shapes."""
    shape = np.random.default_rng(seed).standard_normal((batch, 20)).astype(np.float32)
    return np.asarray(metrics.neutral_vertices(default_flame, shape))


def test_now_face_mask_is_nows_sphere(default_flame):
    verts = _neutral_meshes(default_flame, 2, 11)
    got = np.asarray(metrics.now_face_mask(default_flame, verts))
    # NoW's compute_mask on its 7 points, placed here by hand from the
    # static embedding (row i holds iBUG landmark 17 + i).
    tri = np.asarray(default_flame.faces)[np.asarray(default_flame.static_lmk_faces_idx)]
    bary = np.asarray(default_flame.static_lmk_bary_coords, np.float64)
    for b in range(2):
        pts = {}
        for ibug in (36, 39, 42, 45, 33):
            row = ibug - 17
            pts[ibug] = sum(bary[row, k] * verts[b, tri[row, k]].astype(np.float64)
                            for k in range(3))
        bridge = (pts[39] + pts[42]) / 2
        centre = pts[33] + 0.3 * (bridge - pts[33])
        radius = 1.4 * (np.linalg.norm(pts[36] - pts[45]) + np.linalg.norm(bridge - pts[33])) / 2
        dist = np.linalg.norm(verts[b].astype(np.float64) - centre, axis=1)
        sure = np.abs(dist - radius) > 1e-6  # float32 ties at the sphere's surface
        np.testing.assert_array_equal(got[b][sure], (dist <= radius)[sure])
        # The face, not the head: the nose tip (iBUG 30) is in, the back of
        # the head (the vertex furthest behind it) is out, and it keeps a
        # sizeable part of the mesh, but well under half.
        assert got[b][tri[30 - 17]].all()
        assert not got[b][np.argmin(verts[b, :, 2])]
        assert 0.1 < got[b].mean() < 0.5
    with pytest.raises(ValueError, match="now_face_mask"):
        metrics.now_face_mask(default_flame, verts[:, :10])


def test_masked_mesh_error_aligns_and_scores_the_masked_vertices(default_flame):
    truth = _neutral_meshes(default_flame, 2, 12).astype(np.float64)
    mask = np.asarray(metrics.now_face_mask(default_flame, truth))
    rot = Rotation.from_rotvec([[0.2, 0.1, -0.3], [-0.4, 0.2, 0.1]])
    noise = 0.003 * np.random.default_rng(13).standard_normal(truth.shape)
    pred = np.stack([1.1 * rot[i].apply(truth[i] + noise[i]) for i in range(2)]) + 0.02
    got = np.asarray(metrics.mesh_error_mm(pred, truth, scale=True, mask=mask))
    for i in range(2):
        # Umeyama on the masked vertices alone (scipy's rotation), scored there.
        ps, pt = pred[i][mask[i]], truth[i][mask[i]]
        xs, xt = ps - ps.mean(0), pt - pt.mean(0)
        r, _ = Rotation.align_vectors(xt, xs)
        c = np.sum(r.apply(xs) * xt) / np.sum(xs * xs)
        ref = 1000.0 * np.linalg.norm(c * r.apply(xs) + pt.mean(0) - pt, axis=1).mean()
        assert got[i] == pytest.approx(ref, rel=1e-4)
    # Vertices outside the mask change neither the alignment nor the score.
    moved = pred.copy()
    moved[~mask] += 0.05
    np.testing.assert_allclose(np.asarray(metrics.mesh_error_mm(moved, truth, scale=True, mask=mask)),
                               got, rtol=1e-5)
    assert np.all(np.asarray(metrics.mesh_error_mm(moved, truth, scale=True))
                  > np.asarray(metrics.mesh_error_mm(pred, truth, scale=True)))
    with pytest.raises(ValueError, match="mask has shape"):
        metrics.mesh_error_mm(pred, truth, mask=mask[:, :10])


def test_neutral_vertices_is_flame_with_zeros(default_flame):
    shape = np.random.default_rng(7).standard_normal((2, 30)).astype(np.float32)
    got = np.asarray(jax.jit(metrics.neutral_vertices)(default_flame, shape))
    full = np.zeros((2, default_flame.num_shape), np.float32)
    full[:, :30] = shape
    z = lambda n: np.zeros((2, n), np.float32)  # noqa: E731
    ref = jax.jit(flame_forward)(default_flame, full, z(default_flame.num_expression), z(3),
                                 z(3), z(3), z(6)).vertices
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)
    with pytest.raises(ValueError, match="neutral_vertices"):
        metrics.neutral_vertices(default_flame, np.zeros((1, default_flame.num_shape + 1)))


# ---------------------------------------------------------------- albedo


def _np_psnr(pred, truth, mask):
    diff = (pred.astype(np.float64) - truth)[:, mask]  # (B, M, 3)
    return 10.0 * np.log10(1.0 / (diff ** 2).mean(axis=(1, 2)))


def test_albedo_psnr_matches_numpy():
    rng = np.random.default_rng(8)
    truth = rng.random((3, 32, 32, 3)).astype(np.float32)
    pred = np.clip(truth + rng.normal(0, [[[[0.01]]], [[[0.05]]], [[[0.2]]]],
                                      truth.shape), 0, 1).astype(np.float32)
    mask = rng.random((32, 32)) < 0.3
    pred[:, ~mask] = 0.0  # texels outside the mask do not count
    got = np.asarray(jax.jit(metrics.albedo_psnr)(pred, truth, mask))
    np.testing.assert_allclose(got, _np_psnr(pred, truth, mask), rtol=1e-5)
    assert got[0] > got[1] > got[2]
    # Identical maps read the floor's 120 dB, not inf.
    assert np.asarray(metrics.albedo_psnr(truth, truth, mask)) == pytest.approx(120.0)


@pytest.mark.parametrize("size", [16, 64])
def test_albedo_psnr_resizes_pred_bilinearly(size):
    rng = np.random.default_rng(size)
    pred = rng.random((2, size, size, 3)).astype(np.float32)
    truth = rng.random((2, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[4:28, 8:30] = True
    # PIL's bilinear (half-pixel centres, widened filter when shrinking).
    resized = np.stack([np.stack([np.asarray(Image.fromarray(pred[b, ..., c], mode="F")
                                             .resize((32, 32), Image.BILINEAR))
                                  for c in range(3)], -1) for b in range(2)])
    np.testing.assert_allclose(np.asarray(metrics.albedo_psnr(pred, truth, mask)),
                               _np_psnr(resized, truth, mask), rtol=1e-5)


def test_albedo_psnr_rejects_a_wrong_mask():
    with pytest.raises(ValueError, match="mask"):
        metrics.albedo_psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)), np.ones((4, 4), bool))


def test_uv_layout_is_mirror_symmetric(default_flame):
    # The assumption behind the mask's (and flip completion's) symmetry: the
    # texel mirrored in u shows the mirrored template point.
    bake = bake_uv(default_flame, 64)
    pos, covered = np.asarray(bake.position), np.asarray(bake.covered) > 0
    both = covered & covered[:, ::-1]
    mirrored = pos[:, ::-1] * np.array([-1.0, 1.0, 1.0])
    gap = np.linalg.norm(mirrored - pos, axis=-1)[both]
    assert both.mean() > 0.8 and np.median(gap) < 0.2 * bake.texel_m
    assert np.quantile(gap, 0.99) < 3.0 * bake.texel_m


def test_face_uv_mask_covers_the_face_only(default_flame):
    size = 64
    mask = metrics.face_uv_mask(default_flame, size)
    assert mask.shape == (size, size) and mask.dtype == bool
    assert 0.1 < mask.mean() < 0.45
    assert (mask != mask[:, ::-1]).sum() <= 0.03 * mask.sum()

    bake = bake_uv(default_flame, size)
    pos = np.asarray(bake.position)
    skin = (np.asarray(bake.covered) > 0) & (np.asarray(bake.eye) < 0.5)
    lmk = np.asarray(face_regions(default_flame).landmarks)
    # Skin texels nearest the nose tip, nose bridge, mouth corners and lips,
    # brow centres and outer eye corners are in.
    for ibug in (30, 27, 48, 54, 51, 57, 19, 24, 36, 45):
        dist = np.where(skin, np.linalg.norm(pos - lmk[ibug - 17], axis=-1), np.inf)
        assert mask.flat[np.argmin(dist)], f"iBUG landmark {ibug} is not in the mask"
    # Nothing on the eyeballs, the back of the head, the neck, the crown or the ears.
    assert not (mask & (np.asarray(bake.eye) >= 0.5)).any()
    p = pos[mask]
    eye_line, mouth_line = lmk[36 - 17:48 - 17, 1].mean(), lmk[48 - 17:60 - 17, 1].mean()
    d = eye_line - mouth_line
    assert p[:, 2].min() > 0.0
    assert p[:, 1].min() > mouth_line - 1.0 * d and p[:, 1].max() < lmk[:10, 1].max() + 0.6 * d
    assert np.abs(p[:, 0]).max() < 1.8 * np.abs(lmk[45 - 17, 0])


# ---------------------------------------------------------------- held-out set


@pytest.fixture(scope="module")
def source(default_flame):
    return TeacherSource(CFG, default_flame)


@pytest.fixture(scope="module")
def held(source):
    return teacher.make_held_out(source.world, jax.random.key(11), COUNT, CROP, batch=BATCH)


def test_held_out_shapes_and_truth(source, held, default_flame):
    world = source.world
    c = world.config
    assert held.count == COUNT
    shapes = dict(w=(COUNT, c.n_latent, c.style_dim), crop=(COUNT, CROP, CROP, 3),
                  landmarks=(COUNT, 68, 2), shape=(COUNT, c.num_shape),
                  neutral=(COUNT, default_flame.num_vertices, 3),
                  albedo=(COUNT, c.albedo_size, c.albedo_size, 3),
                  image=(COUNT, c.resolution, c.resolution, 3), crop_matrix=(COUNT, 3, 3))
    for name, want in shapes.items():
        got = getattr(held, name)
        assert got.shape == want and got.dtype == np.float32, name
    assert 0.0 <= held.crop.min() and held.crop.max() <= 1.0
    # z as teacher.sample draws it; the truth is the scene of that w.
    z = jax.random.normal(jax.random.key(11), (COUNT, c.style_dim), jnp.float32)
    np.testing.assert_array_equal(held.w, np.asarray(tt.mapping(world, z)))
    # (Only the shape and albedo readouts: XLA drops the rest of the scene.)
    shape, albedo = jax.jit(lambda t, w: (lambda s: (s.shape, s.albedo))(tt.scene(t, w)))(
        world, jnp.asarray(held.w))
    np.testing.assert_allclose(held.shape, np.asarray(shape), atol=1e-5)
    np.testing.assert_allclose(held.albedo, np.asarray(albedo), atol=1e-5)
    z = lambda n: np.zeros((COUNT, n), np.float32)  # noqa: E731
    ref = jax.jit(flame_forward)(default_flame, shape, z(default_flame.num_expression), z(3),
                                 z(3), z(3), z(6)).vertices
    np.testing.assert_allclose(held.neutral, np.asarray(ref), atol=1e-6)
    # Different identities, and the padded last batch did not repeat one.
    assert len({round(float(s), 4) for s in held.shape[:, 0]}) == COUNT


def test_held_out_crop_is_the_datasets(source, held):
    # The dataset's pipeline on the first batch: TeacherSource.render, then
    # crop_matrix (float32) and warp_crop of the uint8 image, rounded.
    image, lmk = source.render(held.w[:BATCH])
    own = np.round(held.image[:BATCH] * 255.0)
    # Two separately compiled renderers: equal but for rare last-bit rounding.
    assert np.abs(own - image).max() <= 1 and (own != image).mean() < 1e-3
    mats = np.stack([crop_matrix(m, CROP) for m in lmk]).astype(np.float32)
    np.testing.assert_allclose(held.crop_matrix[:BATCH], mats, rtol=1e-6)
    crop_fn = jax.jit(jax.vmap(lambda im, m: jnp.clip(jnp.round(warp_crop(im, m, CROP)), 0, 255)))
    ref = np.asarray(crop_fn(image, mats))
    got = held.crop[:BATCH] * 255.0
    assert np.abs(got - ref).max() <= 1.0 + 1e-3 and (np.round(got) != ref).mean() < 2e-3
    # From the held-out set's own image: the same warp, but compiled into
    # another program, so a bilinear weight's last bit can flip a value lying
    # on a rounding boundary (x.5) by one level, in rare pixels only.
    same = np.asarray(crop_fn(own, mats))
    assert np.abs(np.round(got) - same).max() <= 1 and (np.round(got) != same).mean() < 1e-3
    # An independent bilinear warp (scipy), zeros outside the image.
    inv = np.linalg.inv(mats[0].astype(np.float64))
    ys, xs = np.mgrid[0:CROP, 0:CROP].astype(np.float64)
    sx, sy = inv[0, 0] * xs + inv[0, 2], inv[1, 1] * ys + inv[1, 2]
    scipy_crop = np.stack([ndimage.map_coordinates(own[0, ..., k], [sy, sx], order=1,
                                                   mode="grid-constant", cval=0.0)
                           for k in range(3)], -1)
    assert np.abs(np.round(got[0]) - np.round(scipy_crop)).max() <= 1.0


def test_held_out_landmarks_sit_on_the_face_in_the_crop(source, held):
    lm = held.landmarks.astype(np.float64)
    # DECA's crop centres the landmark box: its centre is pixel (c - 1) / 2,
    # i.e. c / 2 with centres at j + 0.5, and the box spans (c - 1) / 1.375
    # (enlarged 1.1 x 1.25) up to the crop side's truncation to whole pixels.
    centre = (lm.min(1) + lm.max(1)) / 2.0
    np.testing.assert_allclose(centre, CROP / 2.0, atol=1e-3)
    span = (lm.max(1) - lm.min(1)).sum(-1) / 2.0
    assert np.all(span >= (CROP - 1) / 1.375 - 1e-3) and np.all(span < (CROP - 1) / 1.375 * 1.1)
    # Back through the crop matrix: the teacher's own landmarks (integer pixel centres).
    _, truth = source.render(held.w[:BATCH])
    for i in range(BATCH):
        inv = np.linalg.inv(held.crop_matrix[i].astype(np.float64))
        back = (lm[i] - 0.5) @ inv[:2, :2].T + inv[:2, 2]
        np.testing.assert_allclose(back, truth[i], atol=2e-3)
    # On the face: at the inner landmarks (brows to mouth) the crop shows the
    # head, not the teacher's background (a known function of w) warped alike.
    bg = background_image(readout(source.world, jnp.asarray(held.w), "background"),
                          source.world.config.resolution)
    bg_crop = np.asarray(jax.vmap(lambda im, m: warp_crop(im, m, CROP))(bg, held.crop_matrix))
    for i in range(COUNT):
        px = np.floor(lm[i, 17:68]).astype(int)
        diff = np.abs(held.crop[i, px[:, 1], px[:, 0]] - bg_crop[i, px[:, 1], px[:, 0]]).max(-1)
        assert (diff > 0.02).mean() > 0.8, (i, np.round(diff, 3))


def test_make_held_out_rejects_bad_counts(source):
    with pytest.raises(ValueError, match="count"):
        teacher.make_held_out(source.world, jax.random.key(0), 0, CROP)
    with pytest.raises(ValueError, match="held_out_from_w"):
        teacher.held_out_from_w(source.world, np.zeros((0, 18, 512), np.float32), CROP)


def test_identity_views_share_shape_and_albedo_and_vary_the_rest(source):
    world = source.world
    w = teacher.identity_views(world, jax.random.key(3), groups=3, views=2)
    assert w.shape == (6, world.config.n_latent, world.config.style_dim)
    parts = jax.jit(lambda t, w: (lambda s: (s.shape, s.albedo, s.expression, s.global_pose))(
        tt.scene(t, w)))(world, jnp.asarray(w))
    shape, albedo, expression, pose = (np.asarray(p).reshape(3, 2, -1) for p in parts)
    np.testing.assert_allclose(shape[:, 0], shape[:, 1], atol=1e-5)
    np.testing.assert_allclose(albedo[:, 0], albedo[:, 1], atol=1e-5)
    assert np.abs(shape[0, 0] - shape[1, 0]).max() > 0.1          # identities differ
    assert np.all(np.abs(expression[:, 0] - expression[:, 1]).max(-1) > 0.05)
    assert np.all(np.abs(pose[:, 0] - pose[:, 1]).max(-1) > 1e-3)  # and so do the views
