"""Faces in photographs: DECA's 224 crop (checked against DECA's own skimage recipe),
dlib detection/landmarks/chips, and the `face3d landmarks` / `face3d embed` commands."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from face3d_jax.faces.crop import crop_matrix, transform_points, warp_crop

skimage = pytest.importorskip("skimage", reason="scikit-image provides the astronaut photo")
from skimage import data, transform  # noqa: E402


@pytest.fixture(scope="module")
def tools():
    """dlib's detector and landmark predictor, loaded once (the predictor is 100 MB)."""
    pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) runs the detector")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models is not installed (dlib's model files)")
    from face3d_jax.faces.detect import FaceTools

    return FaceTools.load()


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="module")
def some_landmarks():
    # A face-sized cloud of points where the astronaut's face is (no detector needed).
    rng = np.random.default_rng(0)
    return rng.uniform([178.0, 80.0], [262.0, 172.0], size=(68, 2)).astype(np.float32)


def _deca_transform(kpt, size=224, scale=1.25):
    """DECA's TestData crop, verbatim in its steps (decalib/datasets/datasets.py)."""
    left, right = np.min(kpt[:, 0]), np.max(kpt[:, 0])
    top, bottom = np.min(kpt[:, 1]), np.max(kpt[:, 1])
    old_size = (right - left + bottom - top) / 2 * 1.1
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    s = int(old_size * scale)
    src = np.array([[center[0] - s / 2, center[1] - s / 2], [center[0] - s / 2, center[1] + s / 2],
                    [center[0] + s / 2, center[1] - s / 2]])
    dst = np.array([[0, 0], [0, size - 1], [size - 1, 0]])
    return transform.estimate_transform("similarity", src, dst)


def test_crop_matches_deca(astronaut, some_landmarks):
    tform = _deca_transform(some_landmarks.astype(np.float64))
    m = crop_matrix(some_landmarks)
    np.testing.assert_allclose(m, tform.params, atol=1e-9)
    ours = np.asarray(warp_crop(astronaut / 255.0, m))
    ref = transform.warp(astronaut / 255.0, tform.inverse, output_shape=(224, 224), order=1)
    assert ours.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_landmarks_round_trip(astronaut, some_landmarks):
    m = crop_matrix(some_landmarks)
    in_crop = transform_points(some_landmarks, m)
    assert in_crop.min() >= 0 and in_crop.max() <= 223
    back = transform_points(in_crop, np.linalg.inv(m))
    np.testing.assert_allclose(back, some_landmarks, atol=1e-4)
    # The crop's pixel at a landmark's crop position is the photo's pixel at the landmark.
    from scipy.ndimage import map_coordinates

    crop = np.asarray(warp_crop(astronaut, m))
    for c in range(3):
        at_crop = map_coordinates(crop[..., c], in_crop[:, ::-1].T, order=1)
        at_photo = map_coordinates(astronaut[..., c].astype(np.float64),
                                   some_landmarks[:, ::-1].T, order=1)
        # Two bilinear interpolations in a row blur a little: compare loosely.
        assert np.abs(at_crop - at_photo).mean() < 6.0


def test_detect_landmarks_and_chip(astronaut, tools):
    import dlib

    from face3d_jax.faces.detect import face_chip

    faces = tools.detect(astronaut)
    face = faces[0]
    left, top, right, bottom = face.box
    # The astronaut's face: between x 150..290 and y 60..190 of the 512x512 photo.
    assert 150 <= left < right <= 290 and 60 <= top < bottom <= 190 and face.score > 0.5
    assert face.landmarks.shape == (68, 2)
    eyes_y = face.landmarks[36:48, 1].mean()
    mouth_y = face.landmarks[48:68, 1].mean()
    chin_y = face.landmarks[8, 1]
    assert eyes_y < face.landmarks[30, 1] < mouth_y < chin_y  # eyes, nose tip, mouth, chin
    # Our rebuilt dlib shape gives dlib's own chip.
    rect = dlib.rectangle(*(int(v) for v in face.box))
    ref = np.asarray(dlib.get_face_chip(astronaut, tools.predictor(astronaut, rect), size=150))
    np.testing.assert_array_equal(face_chip(astronaut, face), ref)


@pytest.fixture(scope="module")
def images(tmp_path_factory, astronaut):
    from PIL import Image

    folder = tmp_path_factory.mktemp("faces")
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    rng = np.random.default_rng(0)
    noise = (rng.uniform(size=(1, 1, 3)) * 255 + rng.normal(0, 3, (96, 128, 3)))
    Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).save(folder / "wall.png")
    return folder / "astronaut.png", folder / "wall.png"


def test_cli_landmarks(images, tools, tmp_path, capsys):
    from face3d_jax.cli import main

    face, wall = images
    out, draw = tmp_path / "lmk.json", tmp_path / "drawn.png"
    assert main(["landmarks", str(face), str(wall), "--out", str(out), "--draw", str(draw)]) == 0
    err = capsys.readouterr().err
    assert "wall.png: no face found" in err
    result = json.loads(out.read_text())
    first, second = result["images"]
    assert len(first["faces"][0]["landmarks"]) == 68 and first["error"] is None
    assert second["faces"] == [] and second["error"] == "no face found"
    m = np.asarray(first["faces"][0]["crop_224"])
    np.testing.assert_allclose(m, crop_matrix(np.asarray(first["faces"][0]["landmarks"])))
    assert len(list(tmp_path.glob("drawn_*.png"))) == 2
    assert main(["landmarks", str(wall), "--out", str(out)]) == 2
    assert "no face found in any" in capsys.readouterr().err


def test_cli_embed_matches_dlib(images, astronaut, tools, tmp_path, capsys):
    import dlib

    from face3d_jax.cli import main
    from face3d_jax.convert.dlib_dnn import face_recognition_models_file

    face, wall = images
    out = tmp_path / "emb.npy"
    assert main(["embed", str(face), str(wall), "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (2, 128) and emb.dtype == np.float32 and np.isnan(emb[1]).all()
    # dlib's full path: its detector, landmarks, chip and network.
    rec = dlib.face_recognition_model_v1(str(face_recognition_models_file(
        "dlib_face_recognition_resnet_model_v1.dat")))
    rect = max(tools.detector(astronaut, 1), key=lambda r: r.area())
    ref = np.array(rec.compute_face_descriptor(astronaut, tools.predictor(astronaut, rect)))
    cos = emb[0] @ ref / np.linalg.norm(emb[0]) / np.linalg.norm(ref)
    assert cos >= 0.999
    capsys.readouterr()
    assert main(["embed", str(wall), "--out", str(out)]) == 2
    assert "no face found" in capsys.readouterr().err
