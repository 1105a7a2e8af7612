"""The procedural default model: FLAME's sizes, a sound mesh, a sensible rig,
smooth and local blendshapes, and landmarks where the iBUG scheme puts them."""

import collections

import jax
import numpy as np
import pytest

from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.procedural import default_model
from face3d_jax.flame.procedural.bases import EXPRESSION_AMPLITUDE, SHAPE_AMPLITUDE, amplitudes

# iBUG left-right mirror pairs among the static landmarks (17..67).
MIRROR = {**{17 + i: 26 - i for i in range(5)}, **{31 + i: 35 - i for i in range(2)},
          36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46,
          48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65}
MIRROR_CONTOUR = {i: 16 - i for i in range(8)}


def decode(model, batch=1, **params):
    full = dict(shape=np.zeros((batch, 300), np.float32),
                expression=np.zeros((batch, 100), np.float32),
                global_pose=np.zeros((batch, 3), np.float32),
                neck_pose=np.zeros((batch, 3), np.float32),
                jaw_pose=np.zeros((batch, 3), np.float32),
                eye_pose=np.zeros((batch, 6), np.float32))
    full.update(params)
    return jax.jit(flame_forward)(model, **full)


def edges(faces):
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def test_flame_sizes_and_rig(default_flame):
    m = default_flame
    assert 4500 < m.num_vertices < 5600 and 9000 < len(m.faces) < 11000
    assert m.shapedirs.shape == (m.num_vertices, 3, 300)
    assert m.exprdirs.shape == (m.num_vertices, 3, 100)
    assert m.posedirs.shape == (m.num_vertices, 3, 36)
    np.testing.assert_allclose(m.weights.sum(1), 1.0, atol=1e-6)
    assert m.weights.min() >= 0
    np.testing.assert_allclose(m.J_regressor.sum(1), 1.0, atol=1e-5)
    joints = m.J_regressor @ m.v_template
    # Root below the neck joint below the jaw hinge below the eyes; eyes mirrored.
    assert joints[0, 1] < joints[1, 1] < joints[2, 1] < joints[3, 1]
    np.testing.assert_allclose(joints[3] * [-1, 1, 1], joints[4], atol=1e-4)
    assert np.all(m.posedirs[:, :, 18:] == 0)  # the eyes have no correctives


def test_mesh_is_sound(default_flame):
    m = default_flame
    faces = np.asarray(m.faces)
    directed = collections.Counter(map(tuple, np.concatenate(
        [faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])))
    assert max(directed.values()) == 1  # consistently oriented manifold
    boundary = [e for e in directed if (e[1], e[0]) not in directed]
    # Two boundary loops: the base of the neck and the lips' slit.
    nxt = dict(boundary)
    loops, seen = 0, set()
    for start in nxt:
        if start in seen:
            continue
        loops += 1
        v = start
        while v not in seen:
            seen.add(v)
            v = nxt[v]
    assert loops == 2
    # Normals point outwards: the crown up, the nose tip forwards.
    tri = m.v_template[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    top = np.argmax(tri[:, :, 1].mean(1))
    front = np.argmax(tri[:, :, 2].mean(1))
    assert fn[top, 1] > 0 and fn[front, 2] > 0
    assert len(m.uv_faces) == len(faces)
    assert 0 <= m.uv_coords.min() and m.uv_coords.max() <= 1


def test_deterministic_and_seed_only_moves_the_random_fields(default_flame):
    again = default_model()
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "static_lmk_faces_idx",
                 "dynamic_lmk_bary_coords"):
        np.testing.assert_array_equal(getattr(again, name), getattr(default_flame, name))
    other = default_model(seed=1)
    np.testing.assert_array_equal(other.shapedirs[..., :15], default_flame.shapedirs[..., :15])
    assert not np.allclose(other.shapedirs[..., 15:], default_flame.shapedirs[..., 15:])


@pytest.mark.parametrize("name,amplitude", [("shapedirs", SHAPE_AMPLITUDE),
                                            ("exprdirs", EXPRESSION_AMPLITUDE)])
def test_components_are_smooth_orthogonal_and_decaying(default_flame, name, amplitude):
    dirs = np.asarray(getattr(default_flame, name), np.float64)
    e = edges(np.asarray(default_flame.faces))
    mag = np.linalg.norm(dirs, axis=1)  # (V, K)
    jump = np.linalg.norm(dirs[e[:, 0]] - dirs[e[:, 1]], axis=1)  # (E, K)
    active = mag[e[:, 0]] > 0.05 * mag.max(0)
    # Neighbouring vertices move alike: the mean jump along an edge relative
    # to the mean displacement stays far below that of per-vertex noise (~1.4).
    ratio = (jump * active).sum(0) / (mag[e[:, 0]] * active).sum(0)
    noise = np.random.default_rng(0).normal(size=dirs.shape[:2])
    noise_ratio = (np.linalg.norm(noise[e[:, 0]] - noise[e[:, 1]], axis=1).sum()
                   / np.linalg.norm(noise[e[:, 0]], axis=1).sum())
    assert ratio.max() < 0.4 * noise_ratio, (ratio.argmax(), ratio.max(), noise_ratio)
    flat = dirs.reshape(-1, dirs.shape[-1])
    gram = flat.T @ flat
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-6 * np.diag(gram).max()
    # The designed components first (15 identity, 16 expression), then the random ones.
    designed = 15 if name == "shapedirs" else 16
    expected = amplitudes(dirs.shape[-1], designed, amplitude)
    np.testing.assert_allclose(mag.max(0), expected, rtol=1e-4)
    assert np.all(np.diff(expected) < 0)


def test_expressions_stay_on_the_face(default_flame):
    m = default_flame
    mag = np.linalg.norm(np.asarray(m.exprdirs, np.float64), axis=1)
    away = (m.v_template[:, 2] < -0.02) | (m.v_template[:, 1] > 0.09)
    assert mag[away].max() < 0.02 * mag.max()
    eyes = np.asarray(m.weights[:, 3] + m.weights[:, 4]) > 0
    assert mag[eyes].max() == 0


def test_landmarks_follow_the_ibug_layout(default_flame):
    lmk = np.asarray(decode(default_flame).landmarks[0])
    y = lmk[:, 1]
    assert y[17:27].min() > y[36:48].max()           # brows above the eyes
    assert y[36:48].min() > y[30] > y[31:36].max()   # eyes, nose tip, nostrils
    assert y[31:36].min() > y[48:68].max()           # nose above the mouth
    assert y[57] > y[8] and y[8] == y[:17].min()     # chin at the bottom
    assert np.argmax(lmk[:, 2]) == 30                # the nose tip is frontmost
    assert lmk[0, 0] < lmk[8, 0] < lmk[16, 0]        # image-left to image-right
    for a, b in {**MIRROR, **MIRROR_CONTOUR}.items():
        np.testing.assert_allclose(lmk[a] * [-1, 1, 1], lmk[b], atol=1.5e-3, err_msg=f"{a}-{b}")
    m = default_flame
    for row in range(1, 40):  # the contour at yaw +a mirrors the one at -a
        pos = m.dynamic_lmk_faces_idx[row]
        neg = m.dynamic_lmk_faces_idx[39 + row]
        p = np.einsum("lk,lkc->lc", m.dynamic_lmk_bary_coords[row], m.v_template[m.faces[pos]])
        n = np.einsum("lk,lkc->lc", m.dynamic_lmk_bary_coords[39 + row],
                      m.v_template[m.faces[neg]])
        np.testing.assert_allclose(p[::-1] * [-1, 1, 1], n, atol=4e-3)


def test_contour_slides_to_the_silhouette(default_flame):
    """Turning the head, the far side's outline moves towards the nose in the
    image and the near side's away from it."""
    lmk = []
    for yaw in (0.0, 0.5):
        out = decode(default_flame, global_pose=np.array([[0.0, yaw, 0.0]], np.float32))
        lmk.append(np.asarray(out.landmarks[0]))
    # Positive yaw turns the nose towards +x: the image-right side (12..16)
    # turns away from the camera, the image-left side (0..4) towards it.
    def gap(points, i):
        return abs(points[i, 0] - points[30, 0])

    assert gap(lmk[1], 14) < 0.8 * gap(lmk[0], 14)
    assert gap(lmk[1], 2) > gap(lmk[0], 2)


def test_designed_expressions_do_what_they_say(default_flame):
    m = default_flame

    def lmk(component, value):
        e = np.zeros((1, 100), np.float32)
        e[0, component] = value
        return np.asarray(decode(m, expression=e).landmarks[0])

    rest = lmk(0, 0.0)
    opened, smile, brows = lmk(0, 2.0), lmk(1, 2.0), lmk(4, 2.0)
    assert opened[62, 1] - opened[66, 1] > rest[62, 1] - rest[66, 1] + 0.004  # mouth opens
    assert smile[48, 1] > rest[48, 1] + 0.003 and smile[54, 1] > rest[54, 1] + 0.003
    assert np.all(brows[17:27, 1] > rest[17:27, 1]) and np.mean(brows[17:27, 1] - rest[17:27, 1]) > 0.003


def test_eyes_turn_about_their_centres(default_flame):
    m = default_flame
    eye = np.zeros((1, 6), np.float32)
    eye[0, 1] = 0.4
    out = decode(m, eye_pose=eye)
    left = np.asarray(m.weights[:, 3]) == 1
    centre = (m.J_regressor @ m.v_template)[3]
    moved = np.asarray(out.vertices[0])[left]
    np.testing.assert_allclose(np.linalg.norm(moved - centre, axis=1),
                               np.linalg.norm(m.v_template[left] - centre, axis=1), atol=1e-6)
    assert np.abs(moved - m.v_template[left]).max() > 1e-3
