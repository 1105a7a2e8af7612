"""The synthetic teacher world (face3d_jax/teacher/): determinism, shapes
and ranges, disentangled edits, labels against measurements on the FLAME mesh,
the UV bake and detail normals against independent computations, the command.

Tiny sizes (64^2 images, 64^2 albedo, 32^2 displacement) keep this file fast
on a 2-core CPU; one compiled sampler serves most tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from face3d_jax import teacher as tt
from face3d_jax.flame import flame_forward, vertex_normals
from face3d_jax.flame.uv import bake_uv, detail_normal_map, to_uv
from face3d_jax.teacher.commands import (labels_jit, mapping_jit, render_jit, scene_jit,
                                         write_teacher_samples)

CONFIG = tt.TeacherConfig(resolution=64, albedo_size=64, displacement_size=32,
                          calibration_samples=512)
BATCH = 3


@pytest.fixture(scope="module")
def teacher(default_flame):
    return tt.make_teacher(jax.random.key(0), default_flame, CONFIG)


def _draw(teacher, key):
    """sample(), through the shared compiled pieces: (w, scene, sample)."""
    w = mapping_jit(teacher, jax.random.normal(key, (BATCH, CONFIG.style_dim)), 1.0)
    scene = scene_jit(teacher, w)
    return w, scene, render_jit(teacher, scene)


@pytest.fixture(scope="module")
def drawn(teacher):
    return _draw(teacher, jax.random.key(1))


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_make_teacher_is_deterministic(default_flame, teacher):
    again = tt.make_teacher(jax.random.key(0), default_flame, CONFIG)
    assert _leaves_equal(teacher, again)
    other = tt.make_teacher(jax.random.key(1), default_flame, CONFIG)
    assert not np.array_equal(other.mapping[0][0], teacher.mapping[0][0])
    assert not np.array_equal(other.dims["identity"], teacher.dims["identity"])
    # The subspaces are disjoint sets of w's dimensions.
    used = np.concatenate([teacher.dims[name] for name in tt.SUBSPACES])
    assert len(np.unique(used)) == len(used) <= CONFIG.style_dim


def test_sample_is_deterministic_under_jit(teacher, drawn):
    again = _draw(teacher, jax.random.key(1))
    assert _leaves_equal(drawn, again)
    other = _draw(teacher, jax.random.key(2))
    assert not np.array_equal(np.asarray(other[0]), np.asarray(drawn[0]))
    # sample() is that composition and traces under jit (shapes only: no compile).
    shapes = jax.eval_shape(lambda t, k: tt.sample(t, k, BATCH), teacher, jax.random.key(1))
    assert _leaves_equal(jax.tree.map(lambda x: x.shape, shapes),
                         jax.tree.map(lambda x: x.shape, drawn))


def test_shapes_dtypes_and_ranges(teacher, drawn, default_flame):
    w, scene, s = drawn
    res, ta, td, v = CONFIG.resolution, CONFIG.albedo_size, CONFIG.displacement_size, \
        default_flame.num_vertices
    expected = {
        "w": (w, (BATCH, 18, 512)), "shape": (scene.shape, (BATCH, 300)),
        "expression": (scene.expression, (BATCH, 50)),
        "global_pose": (scene.global_pose, (BATCH, 3)), "jaw_pose": (scene.jaw_pose, (BATCH, 3)),
        "eye_pose": (scene.eye_pose, (BATCH, 6)), "albedo": (scene.albedo, (BATCH, ta, ta, 3)),
        "displacement": (scene.displacement, (BATCH, td, td, 1)),
        "light": (scene.light, (BATCH, 9, 3)), "camera": (scene.camera, (BATCH, 3)),
        "background": (scene.background, (BATCH, res, res, 3)),
        "image": (s.image, (BATCH, res, res, 3)), "mask": (s.mask, (BATCH, res, res, 1)),
        "vertices": (s.vertices, (BATCH, v, 3)), "landmarks2d": (s.landmarks2d, (BATCH, 68, 2)),
        "albedo_px": (s.albedo, (BATCH, res, res, 3)), "shading": (s.shading, (BATCH, res, res, 3)),
    }
    for name, (value, shape) in expected.items():
        assert value.shape == shape, name
        assert value.dtype == jnp.float32, name
        assert np.all(np.isfinite(np.asarray(value))), name
    for value in (s.image, scene.albedo, scene.background):
        assert 0.0 <= float(value.min()) and float(value.max()) <= 1.0
    disp = np.asarray(scene.displacement)
    assert np.abs(disp).max() < CONFIG.max_displacement
    assert np.abs(disp).max() > 2e-4  # wrinkles of a fraction of a millimetre at least
    # Mostly positive shading: everywhere the head covers a pixel fully.
    inside = np.asarray(s.mask)[..., 0] > 0.99
    assert np.all(np.asarray(s.shading)[inside] > 0.0)
    # The displacement moved the skin along the normals, within the bound.
    moved = np.linalg.norm(np.asarray(s.vertices - s.coarse_vertices), axis=-1)
    assert 0.0 < moved.max() <= CONFIG.max_displacement


def test_images_are_faces_with_landmarks_inside(drawn):
    _, scene, s = drawn
    mask = np.asarray(s.mask)[..., 0]
    coverage = mask.mean(axis=(1, 2))
    assert np.all((coverage > 0.15) & (coverage < 0.8)), coverage
    lmk = np.asarray(s.landmarks2d)
    assert np.all((lmk > 0) & (lmk < CONFIG.resolution))
    image = np.asarray(s.image)
    inside = mask > 0.999
    assert image[inside].std() > 0.03  # skin, lips, brows, eyes and shading differ
    # The image is the truth's albedo times its shading on the head (clipped),
    # and the background around it.
    # Antialiasing blends the pixels along inner silhouettes (nose, lips), so
    # most pixels, not all, match.
    product = np.clip(np.asarray(s.albedo) * np.asarray(s.shading), 0.0, 1.0)
    assert np.mean(np.abs(image - product)[inside].max(-1) < 1e-4) > 0.9
    outside = mask < 1e-6
    assert np.abs(image - np.asarray(scene.background))[outside].max() < 1e-6


def test_pose_within_its_bounds_and_spread_as_configured(teacher):
    """Angles are max * tanh(spread / max * x) of a readout x standardised
    over the calibration batch: bounded by max, with the standard deviation
    of that function of x ~ N(0, 1). The readout is a linear form of a
    non-linear w, so only close to normal: 10% on the spread, where 4000
    samples alone leave about 1%."""
    z = jax.random.normal(jax.random.key(7), (4000, CONFIG.style_dim))
    lab = labels_jit(teacher, mapping_jit(teacher, z, 1.0))
    x = np.random.default_rng(0).standard_normal(200_000)
    for name in ("yaw", "pitch", "roll"):
        angle = np.asarray(lab[name])
        bound, spread = getattr(CONFIG, f"max_{name}_deg"), getattr(CONFIG, f"{name}_spread_deg")
        assert np.abs(angle).max() < bound, name
        expected = np.std(bound * np.tanh(spread / bound * x))
        assert abs(np.std(angle) / expected - 1.0) < 0.1, (name, np.std(angle), expected)
    assert abs(np.mean(lab["yaw"])) < 0.1 * CONFIG.yaw_spread_deg  # no side preferred


def test_labels_match_the_mesh_and_the_rotation(teacher, drawn, default_flame):
    w, scene, _ = drawn
    lab = labels_jit(teacher, w)
    # Angles: read back from the axis-angle pose with scipy's Euler decomposition.
    euler = Rotation.from_rotvec(np.asarray(scene.global_pose, np.float64)).as_euler(
        "YXZ", degrees=True)
    np.testing.assert_allclose(euler[:, 0], lab["yaw"], atol=1e-3)
    np.testing.assert_allclose(euler[:, 1], lab["pitch"], atol=1e-3)
    np.testing.assert_allclose(euler[:, 2], lab["roll"], atol=1e-3)
    # The face points to the viewer's right for a positive yaw.
    forward = Rotation.from_rotvec(np.asarray(scene.global_pose, np.float64)).apply([0, 0, 1.0])
    assert np.all(np.sign(forward[:, 0]) == np.sign(np.asarray(lab["yaw"])))
    np.testing.assert_allclose(np.rad2deg(np.asarray(scene.jaw_pose[:, 0])), lab["jaw_open"],
                               atol=1e-4)
    # Expression labels measured on the decoded mesh (neutral pose, mean shape).
    zeros = {k: np.zeros((BATCH, n), np.float32) for k, n in (
        ("global_pose", 3), ("neck_pose", 3), ("jaw_pose", 3), ("eye_pose", 6))}
    shape = np.zeros((BATCH, 300), np.float32)
    forward = jax.jit(flame_forward)
    posed = forward(default_flame, shape, scene.expression, **zeros).landmarks
    neutral = forward(default_flame, shape, 0 * scene.expression, **zeros).landmarks
    lift = 1000.0 * np.asarray(posed - neutral)[..., 1]
    smile = lift[:, [48, 54]].mean(1) - lift[:, [51, 57]].mean(1)
    brows = lift[:, 17:27].mean(1) - lift[:, 27]
    np.testing.assert_allclose(lab["smile"], smile, atol=2e-3)
    np.testing.assert_allclose(lab["brow_raise"], brows, atol=2e-3)


@pytest.mark.parametrize("name", ["smile", "yaw", "jaw_open"])
def test_edits_change_the_attribute_and_keep_the_identity(teacher, drawn, name):
    w = drawn[0]
    n = jax.jit(tt.attribute_direction, static_argnums=1)(teacher, name)
    assert np.all(np.asarray(n)[teacher.dims["identity"]] == 0.0)
    edited = w + 3.0 * n
    before, after = scene_jit(teacher, w), scene_jit(teacher, edited)
    # The identity truth is bit-identical.
    assert np.array_equal(np.asarray(before.shape), np.asarray(after.shape))
    assert np.array_equal(np.asarray(before.albedo), np.asarray(after.albedo))
    # The attribute moved the right way, and the expression or pose changed.
    delta = np.asarray(labels_jit(teacher, edited)[name] - labels_jit(teacher, w)[name])
    assert np.all(delta > 0.05), delta
    changed = (before.expression, after.expression) if name == "smile" else \
        (before.global_pose, after.global_pose) if name == "yaw" else \
        (before.jaw_pose, after.jaw_pose)
    assert not np.array_equal(np.asarray(changed[0]), np.asarray(changed[1]))


def test_different_z_different_identities(drawn):
    _, scene, s = drawn
    shape = np.asarray(scene.shape)
    albedo = np.asarray(scene.albedo)
    for i in range(BATCH):
        for j in range(i + 1, BATCH):
            assert np.abs(shape[i] - shape[j]).mean() > 0.3
            assert np.abs(albedo[i] - albedo[j]).mean() > 0.005


def test_truncation_zero_gives_the_mean_w(teacher):
    z = jax.random.normal(jax.random.key(3), (BATCH, CONFIG.style_dim))
    w = mapping_jit(teacher, z, 0.0)
    np.testing.assert_array_equal(np.asarray(w), np.broadcast_to(teacher.w_mean, w.shape))


def test_uv_bake_reproduces_the_texel_centres(default_flame):
    size = 48
    bake = bake_uv(default_flame, size)
    covered = np.asarray(bake.covered) > 0
    assert 0.8 < covered.mean() < 1.0
    uv = np.asarray(default_flame.uv_coords)[np.asarray(default_flame.uv_faces)[bake.tri]]
    recon = np.einsum("hwk,hwkc->hwc", bake.bary, uv)
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    centre = np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], -1)
    np.testing.assert_allclose(recon[covered], centre[covered], atol=1e-5)
    assert np.all(bake.bary[covered] >= -1e-6)
    # The template position of a texel is where FLAME's vertex UV puts it.
    v_template = np.asarray(default_flame.v_template)
    pos = np.asarray(to_uv(bake, default_flame.faces, v_template[None]))[0]
    np.testing.assert_allclose(pos, bake.position, atol=1e-6)


def test_detail_normals_match_the_displaced_mesh(default_flame):
    """A smooth displacement: the normal map must agree with the normals of the
    displaced mesh itself (computed from its triangles) wherever both resolve it."""
    size = 64
    bake = bake_uv(default_flame, size)
    verts = jnp.asarray(default_flame.v_template)[None]
    faces = default_flame.faces
    rows = (jnp.arange(size) + 0.5) / size
    disp = 0.004 * jnp.sin(2 * jnp.pi * 3 * rows)[None, :, None, None] * jnp.ones((1, 1, size, 1))

    def both(verts, disp):
        normals = vertex_normals(verts, faces)
        detail = detail_normal_map(bake, faces, verts, normals, disp)
        from face3d_jax.flame import displace
        moved = displace(verts, faces, default_flame.vertex_uv, disp)
        return detail, to_uv(bake, faces, vertex_normals(moved, faces)), to_uv(bake, faces, normals)

    detail, reference, coarse = jax.jit(both)(verts, disp)
    skin = (np.asarray(bake.covered) > 0) & (np.asarray(bake.eye) < 0.01)
    ref = np.asarray(reference)[0][skin]
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    cos_detail = np.sum(np.asarray(detail)[0][skin] * ref, -1)
    cos_coarse = np.sum(np.asarray(coarse)[0][skin] / np.linalg.norm(
        np.asarray(coarse)[0][skin], axis=-1, keepdims=True) * ref, -1)
    # The detail normals follow the displaced surface much better than the coarse ones.
    assert np.median(np.degrees(np.arccos(np.clip(cos_detail, -1, 1)))) < 3.0
    assert np.median(1 - cos_detail) < 0.3 * np.median(1 - cos_coarse)


def test_write_teacher_samples(tmp_path, teacher):
    # Batch 3 reuses the compiled scene and renderer of the other tests.
    written = write_teacher_samples(tmp_path, num=4, batch=BATCH, teacher=teacher)
    names = sorted(p.name for p in written)
    assert names == [f"{kind}_{i:04d}.png" for kind in ("albedo", "sample") for i in range(4)] \
        + ["truth.npz"]
    truth = np.load(tmp_path / "truth.npz")
    assert truth["vertices"].shape == (4, teacher.model.num_vertices, 3)
    assert truth["landmarks2d"].shape == (4, 68, 2) and truth["yaw"].shape == (4,)
    assert truth["w"].shape == (4, 18, 512) and truth["albedo"].shape == (4, 64, 64, 3)
    # The first samples are those of key(0) folded with 1: the samples of the world.
    w, _, first = _draw(teacher, jax.random.split(jax.random.fold_in(jax.random.key(0), 1), 2)[0])
    np.testing.assert_array_equal(truth["w"][:3], np.asarray(w))
    np.testing.assert_array_equal(truth["vertices"][:3], np.asarray(first.vertices))
    from PIL import Image
    assert Image.open(tmp_path / "sample_0000.png").size == (CONFIG.resolution,) * 2


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from face3d_jax.cli import main

    assert main(["teacher", "--num", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num" in err[0]
