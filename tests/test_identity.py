"""F's input aligned as its network was trained (face3d_jax/faces/align.py),
F as one module (face3d_jax/nets/identity.py), its LDA head, and the identity
statistics of face3d_eval.identity_separability (face3d_jax/metrics.py).

References nobody here wrote: dlib's own `get_face_chip` and face descriptor
on a real photograph (scikit-image's astronaut), scikit-image's
`SimilarityTransform.estimate` (what insightface's `norm_crop` calls) and
`warp`, and scipy's generalized symmetric eigensolver for Fisher's LDA.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from face3d_jax import metrics
from face3d_jax.faces import align
from face3d_jax.nets.identity import IdentityHead, IdentityNetwork, fit_lda
from face3d_jax.teacher.identity_head import load_identity_head, save_identity_head

skimage_data = pytest.importorskip("skimage.data")
dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def photo():
    """The astronaut photograph and dlib's 68 landmarks of its face."""
    from face3d_jax.faces.detect import FaceTools

    image = skimage_data.astronaut()
    face = FaceTools.load().detect(image)[0]
    return image, face


@pytest.mark.parametrize("size", [150, 96])
def test_dlib_chip_is_dlibs_own(photo, size):
    """Same map, same bilinear formula as dlib's extract_image_chip; dlib
    truncates to uint8 where we keep floats, and float32 rounding (~1e-4 of
    255) moves a truncation across an integer only for values that lie that
    close to one: at most 1 level apart, and equal nearly everywhere."""
    from face3d_jax.faces.detect import face_chip

    image, face = photo
    ref = face_chip(image, face, size=size, padding=0.25).astype(np.int64)
    m = align.dlib_chip_matrix(face.landmarks[None], size)
    ours = np.asarray(align.warp_images(image[None], m, size))[0]
    truncated = np.floor(ours + 1e-3).astype(np.int64)
    assert np.abs(truncated - ref).max() <= 1
    assert np.mean(truncated == ref) > 0.99
    # A matrix built without dlib's half-pixel rectangle (the plain similarity
    # of the chip points) would be off by about a pixel at the chip's edges.
    assert np.mean(np.abs(ours - ref) < 1.0) > 0.99


def test_arcface_template_as_insightface(photo):
    """insightface: skimage's SimilarityTransform from the 5 points onto the
    template, then a bilinear warp (cv2.warpAffine; skimage's warp here)."""
    from skimage import transform

    image, face = photo
    pts = np.asarray(align.five_points(face.landmarks[None]))[0]
    np.testing.assert_allclose(pts[0], face.landmarks[36:42].mean(0), atol=1e-4)
    np.testing.assert_allclose(pts[2:], face.landmarks[[30, 48, 54]], atol=1e-4)
    src, dst = pts.astype(np.float64), np.asarray(align.ARCFACE_TEMPLATE)
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = transform.SimilarityTransform.from_estimate(src, dst)
    else:
        tform = transform.SimilarityTransform()
        assert tform.estimate(src, dst)
    m = np.asarray(align.arcface_matrix(face.landmarks[None]))[0]
    # float32 SVD against float64: ~1e-7 relative on a map of scale ~0.5 and
    # translations of ~100 pixels.
    np.testing.assert_allclose(m[:2, :2], tform.params[:2, :2], atol=1e-5)
    np.testing.assert_allclose(m[:2, 2], tform.params[:2, 2], atol=1e-3)
    ref = transform.warp(image.astype(np.float64), tform.inverse, output_shape=(112, 112),
                         order=1, mode="constant", cval=0.0, preserve_range=True)
    ours = np.asarray(align.warp_images(image[None], m[None], 112))[0]
    assert np.abs(ours - ref)[1:-1, 1:-1].max() < 0.05  # the same bilinear samples
    # From the 5 points directly, the same map.
    np.testing.assert_allclose(np.asarray(align.arcface_matrix(pts[None]))[0], m, atol=1e-4)


def test_alignment_undoes_a_similarity(photo):
    """A face moved, turned and scaled in its image gives the same chip once
    its landmarks move with it: the chip depends on the face, not on where it
    is. (Bilinear resampling twice blurs: a few grey levels.)"""
    image, face = photo
    angle, scale, shift = np.deg2rad(12.0), 0.8, np.array([40.0, -25.0])
    c, s = np.cos(angle), np.sin(angle)
    moved = np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]],
                      [0.0, 0.0, 1.0]], np.float32)
    warped = np.asarray(align.warp_images(image[None], moved[None], 512))[0]
    lmk2 = face.landmarks @ moved[:2, :2].T + moved[:2, 2]
    for kind, size in (("dlib", 150), ("arcface", 112)):
        a = np.asarray(align.align_faces(image[None].astype(np.float32),
                                         face.landmarks[None], kind, size))[0]
        b = np.asarray(align.align_faces(warped[None], lmk2[None].astype(np.float32),
                                         kind, size))[0]
        centre = slice(size // 4, 3 * size // 4)
        assert np.mean(np.abs(a - b)[centre, centre]) < 6.0, kind
    with pytest.raises(ValueError, match="unknown face alignment"):
        align.alignment_matrix("mtcnn", face.landmarks[None], 112)


def test_warp_is_differentiable_in_the_image():
    """Bilinear sampling is linear in the image: the gradient is exact."""
    from jax.test_util import check_grads

    image = jax.random.uniform(jax.random.key(0), (1, 20, 24, 3))
    m = jnp.asarray([[[1.1, 0.1, -2.0], [-0.1, 1.1, 1.5], [0.0, 0.0, 1.0]]])
    check_grads(lambda x: align.warp_images(x, m, 16), (image,), order=1, modes=["rev"],
                atol=1e-3, rtol=1e-3)


def test_dlib_identity_network_is_dlibs_descriptor(photo):
    """F (our port, our chip) against dlib's compute_face_descriptor of the
    same face: dlib calls two faces the same person below a distance of 0.6;
    the two pipelines differ by uint8 truncation of the chip only."""
    from face3d_jax.convert.dlib_dnn import face_recognition_models_file
    from face3d_jax.nets import dlib_resnet

    image, face = photo
    rec = dlib.face_recognition_model_v1(str(face_recognition_models_file(
        dlib_resnet.MODEL_FILE)))
    parts = [dlib.point(int(x), int(y)) for x, y in face.landmarks]
    left, top, right, bottom = (int(v) for v in face.box)
    shape = dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), parts)
    ref = np.asarray(rec.compute_face_descriptor(image, shape))
    net = IdentityNetwork(dlib_resnet.load_dlib_resnet())
    emb, maps = jax.jit(lambda f, x, p: f(x, p))(net, jnp.asarray(image[None] / 255.0,
                                                                   jnp.float32),
                                                 jnp.asarray(face.landmarks[None]))
    assert np.linalg.norm(np.asarray(emb)[0] - ref) < 0.02
    assert maps["level4"].shape == (1, 35, 35, 32)


def test_fit_lda_solves_fishers_generalised_eigenproblem():
    """P's columns are the leading eigenvectors of S_b v = lambda S_w v with
    v^T S_w v = 1 (scipy.linalg.eigh(a, b) normalises them so): equal up to
    sign, when the eigenvalues are distinct."""
    rng = np.random.default_rng(0)
    classes, per, d = 12, 6, 8
    centres = rng.normal(size=(classes, d)) * np.linspace(3.0, 0.2, d)
    labels = np.repeat(np.arange(classes), per)
    x = centres[labels] + rng.normal(size=(classes * per, d)) @ rng.normal(size=(d, d)) * 0.3
    mean, proj = fit_lda(x, labels, dim=3, ridge=1e-3)
    xc = x - x.mean(0)
    means = np.stack([xc[labels == c].mean(0) for c in range(classes)])
    sw = sum((xc[labels == c] - means[c]).T @ (xc[labels == c] - means[c])
             for c in range(classes)) / len(x)
    sw = sw + 1e-3 * np.trace(sw) / d * np.eye(d)
    sb = means.T @ means / classes
    values, vectors = scipy.linalg.eigh(sb, sw)
    ref = vectors[:, ::-1][:, :3]
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-6)
    signs = np.sign(np.sum(proj * ref, axis=0))
    np.testing.assert_allclose(proj, ref * signs, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(proj.T @ sw @ proj, np.eye(3), atol=1e-4)
    # As in the teacher world: every sample far from the origin along one
    # common direction (a real network's cluster of synthetic faces), a large
    # nuisance spread within each identity, small differences between them.
    # Raw cosines barely tell identities apart; the head's do.
    common = np.zeros(d)
    common[0] = 20.0
    nuisance = np.zeros((d, d))
    nuisance[1, 1] = nuisance[2, 2] = 3.0

    def draw(seed):
        r = np.random.default_rng(seed)
        ids = r.normal(size=(classes, d)) * np.r_[0.0, 0.0, 0.0, np.full(d - 3, 0.6)]
        return ids, lambda ids: (common + ids[labels] + r.normal(size=(len(labels), d)) @ nuisance
                                 + 0.05 * r.normal(size=(len(labels), d)))

    ids, sample = draw(1)
    train, test = sample(ids), sample(ids)
    head = IdentityHead(*fit_lda(train, labels, dim=d - 3))
    raw = metrics.identity_statistics(test, labels)
    fitted = metrics.identity_statistics(np.asarray(head(jnp.asarray(test))), labels)
    assert raw["gap"] < 0.05 and fitted["gap"] > 0.5 and fitted["rank1"] == 1.0
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_lda(x[:1], labels[:1], dim=1)


def test_identity_statistics_on_a_worked_case():
    """Three identities seen twice, embeddings on the unit circle at chosen
    angles: the cosines are the cosines of the angle differences."""
    deg = np.deg2rad([0.0, 10.0, 90.0, 100.0, 200.0, 125.0])
    emb = np.stack([np.cos(deg), np.sin(deg)], axis=1) * np.array([[1.0], [2.0], [3.0],
                                                                    [1.0], [1.0], [5.0]])
    labels = np.array([0, 0, 1, 1, 2, 2])
    f = metrics.identity_statistics(emb, labels)
    same = np.cos(np.deg2rad([10.0, 10.0, 75.0]))
    np.testing.assert_allclose(f["same_mean"], same.mean(), atol=1e-12)
    all_pairs = [np.cos(deg[i] - deg[j]) for i in range(6) for j in range(6)
                 if labels[i] != labels[j]]
    np.testing.assert_allclose(f["different_mean"], np.mean(all_pairs), atol=1e-12)
    np.testing.assert_allclose(f["gap"], f["same_mean"] - f["different_mean"], atol=1e-12)
    # Nearest others: 0->1, 1->0, 2->3, 3->2, 4 (200 deg)->5 (125, 75 deg away, before
    # 3 at 100 deg); 5 -> 3 (25 deg away), another identity: 5 of 6 right.
    assert f["rank1"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="at least 2 identities"):
        metrics.identity_statistics(emb[:3], np.array([0, 0, 1]))


def test_identity_head_file_round_trip_and_errors(tmp_path):
    head = IdentityHead(np.arange(4.0), np.ones((4, 2)))
    settings = dict(kind="dlib", chip_size=96, identities=8, ridge=1e-3, shape=(1, 2))
    path = save_identity_head(tmp_path / "identity_head.npz", head, settings)
    back = load_identity_head(path, settings)
    np.testing.assert_array_equal(np.asarray(back.projection[...]), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"identity_head.npz: fitted with chip_size=96, the "
                                         r"config asks for 150; delete the file to refit"):
        load_identity_head(path, {**settings, "chip_size": 150})
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="junk.npz: not an identity head"):
        load_identity_head(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        load_identity_head(tmp_path / "missing.npz")
    assert json.loads(str(np.load(path)["settings"]))["identities"] == 8


def test_a_run_fits_its_identity_head_once_and_f_uses_it(tmp_path, monkeypatch):
    """`face3d train`'s head: fitted on teacher identities into the workdir,
    read back (not refitted) on the next call, refused when the config asks
    for other settings; the trainer's F then ends in the head."""
    from flax import nnx
    from train_fixtures import micro_config

    from face3d_jax.teacher import identity_head as ih
    from face3d_train import identity
    from face3d_train.loop import load_model
    from face3d_train.state import make_setup

    config = micro_config()
    config.model.identity.world_head.update(dict(identities=4, views=2, dim=3))
    model = load_model(config)
    head = identity.ensure_identity_head(config, tmp_path, model=model, progress=False)
    assert (tmp_path / ih.HEAD_FILE).is_file() and head.projection[...].shape == (128, 3)

    def no_refit(*args, **kwargs):
        raise AssertionError("refitted")

    monkeypatch.setattr(identity, "fit_identity_head", no_refit)
    again = identity.ensure_identity_head(config, tmp_path, model=model, progress=False)
    np.testing.assert_array_equal(np.asarray(again.projection[...]),
                                  np.asarray(head.projection[...]))
    config.model.identity.world_head.dim = 4
    with pytest.raises(ValueError, match="identity_head.npz: fitted with dim=3"):
        identity.ensure_identity_head(config, tmp_path, model=model, progress=False)
    config.model.identity.world_head.dim = 3

    setup = make_setup(config, model, jax.random.key(0), identity_head=again)
    f = nnx.merge(setup.frozen_graphs["identity"], setup.frozen["identity"])
    crops = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    landmarks = jnp.broadcast_to(jnp.asarray(np.random.default_rng(0).uniform(8, 24, (68, 2)),
                                             jnp.float32), (2, 68, 2))
    assert f(crops, landmarks)[0].shape == (2, 3)
    config.model.identity.world_head.identities = 0
    assert identity.ensure_identity_head(config, tmp_path, model=model) is None


def test_uv_face_matrix_puts_the_uv_face_where_f_expects_a_face():
    """The template's landmarks, in UV, land near dlib's mean face in the chip
    (a least-squares similarity of an unwrapped face: a few pixels of 150),
    and a UV map whose texels hold their own (u, v) is read there with the
    renderer's texel convention (row 0 at v = 1, centres at half texels)."""
    from face3d_jax.flame import default_model
    from face3d_jax.flame.uv import landmark_uvs
    from face3d_jax.nets import dlib_resnet
    from face3d_train.state import uv_face_matrix

    model = default_model()
    size = 128
    net = IdentityNetwork(dlib_resnet.load_dlib_resnet(), chip_size=150)
    m = uv_face_matrix(model, net, size)
    texel = (np.arange(size) + 0.5) / size
    uv_map = np.stack(np.meshgrid(texel, 1.0 - texel, indexing="xy"), axis=-1)  # row 0: v = 1
    chip = np.asarray(align.warp_images(uv_map[None].astype(np.float32), m[None], 150))[0]
    uv = landmark_uvs(model)  # iBUG 17..67
    index = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5,
                      np.ones(len(uv))], axis=-1)
    placed = (index @ m.T)[:, :2]
    fitted = np.asarray(align.DLIB_CHIP_POINTS) - 17
    template = align.dlib_mean_face(150, 0.25)
    assert np.abs(placed[fitted] - template[fitted]).max() < 8.0
    nose = 30 - 17
    r, c = (int(round(v)) for v in placed[nose][::-1])
    np.testing.assert_allclose(chip[r, c], uv[nose], atol=1.5 / size)
