"""A trained run read back (`face3d_train.trained`) and the commands built on it
(`face3d generate`, `face3d edit`): the loader reproduces the trainer's own
forward pass, the files read back hold the generated face, bad input is one
line naming the file."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image
from train_fixtures import micro_run

from face3d_jax import cli
from face3d_train import face_files as ff
from face3d_train.generate import edit, generate, turntable_yaws
from face3d_train.trained import PAPER_YAWS, load_run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return micro_run(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def run(workdir):
    return load_run(workdir)


@pytest.fixture(scope="module")
def faces(run):
    return run.faces(run.w_from_seeds([0, 1, 2]), batch=2)


def test_the_loader_reproduces_the_trainers_forward_pass(workdir, run, faces):
    """E_shape's codes, G_Ab's EMA albedo and the render over the crop are the
    trainer's own (`step.context` with constant noise, as the evaluation runs
    it) on the same crop and w. Both are the same float32 graph compiled
    separately: XLA may fuse differently, so a few ulps of the outputs' size."""
    import jax

    from face3d_train.checkpoint import Checkpointer
    from face3d_train.loop import Trainer, make_mesh
    from face3d_train.step import Nets, context

    assert run.step == 2
    tr = Trainer(run.config, run.model, make_mesh(jax.devices()[:1]))
    with Checkpointer(workdir / "checkpoints", keep=10, save_every=1, async_save=False) as ck:
        state, _ = ck.restore(tr.abstract_state())
    batch = dict(crop=faces.crop, w=faces.w, landmarks=np.zeros((3, 68, 2), np.float32))
    nets = Nets(tr.setup, state, tr.frozen, g=state.albedo.g_ema)
    ctx = context(tr.setup, nets, batch, jax.random.key(0), noise_mode="const")
    for k, v in ctx.codes.items():
        np.testing.assert_allclose(faces.codes[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(faces.albedo, np.clip(ctx.albedo, 0, 1), atol=1e-5)
    np.testing.assert_allclose(faces.displacement, ctx.displacement, atol=1e-7)
    np.testing.assert_allclose(faces.render, np.clip(ctx.render.image, 0, 1), atol=1e-4)


def test_faces_shapes_and_determinism(run, faces):
    v = run.model.faces.max() + 1
    c, r = run.crop_size, run.source.resolution
    assert faces.w.shape == (3, run.n_latent, 512)
    assert faces.image.shape == (3, r, r, 3) and faces.image.dtype == np.uint8
    assert faces.crop.shape == faces.render.shape == (3, c, c, 3)
    for name in ("coarse", "detailed", "canonical"):
        assert getattr(faces, name).shape == (3, v, 3)
    assert np.isfinite(faces.detailed).all()
    # The displacement moves the detailed mesh off the coarse one, no further than its range.
    gap = np.linalg.norm(faces.detailed - faces.coarse, axis=-1)
    assert gap.max() <= run.max_displacement * (1 + 1e-4)
    again = run.faces(faces.w[1:2])
    np.testing.assert_array_equal(again.albedo[0], faces.albedo[1])
    np.testing.assert_allclose(again.detailed[0], faces.detailed[1], atol=1e-6)
    # Different people differ.
    assert np.abs(faces.image[0].astype(int) - faces.image[1]).mean() > 1


def test_w_shapes_are_checked(run):
    w = run.w_from_seeds([0])
    np.testing.assert_array_equal(run.check_w(w[0, 0]), w)  # (512,) broadcast over rows
    with pytest.raises(ValueError, match=r"w of shape \(2, 3\)"):
        run.check_w(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        run.check_w(np.full((512,), np.nan))
    with pytest.raises(ValueError, match="z of shape"):
        run.w_from_z(np.zeros((2, 7)))


def test_views_turn_the_head(run, faces):
    views = run.views(faces.take([0]), PAPER_YAWS, size=64)
    assert views.shape == (1, len(PAPER_YAWS), 64, 64, 3)
    front = views[0, PAPER_YAWS.index(0.0)]
    # Something is drawn on the white background, and a turned head is another picture.
    assert (front < 0.99).any(axis=-1).mean() > 0.1
    assert np.abs(views[0, 0] - front).mean() > 0.01


def _video(path) -> tuple[int, np.ndarray]:
    """An MP4's frame count and its first frame (H, W, 3), read by opencv."""
    import cv2

    video = cv2.VideoCapture(str(path))
    try:
        count = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = video.read()
    finally:
        video.release()
    assert ok, f"{path}: no frame"
    return count, frame


def test_generate_writes_the_face_that_was_generated(tmp_path, run, faces):
    pygltflib = pytest.importorskip("pygltflib")
    import cv2

    out = tmp_path / "gen"
    paths = generate(run, faces.w[:1], out, names=["a"], video=True, progress=False, size=64)
    names = {p.name for p in paths}
    assert {"a.glb", "a.obj", "a.mtl", "a.png", "a_displacement.png", "a_views.png", "a.npz",
            "a_turntable.mp4"} <= names
    albedo = ff.to_u8(faces.albedo[0])
    assert albedo.std() > 2  # the generated map, not a constant
    mesh = trimesh.load(out / "a.glb", force="mesh")
    tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(tex, albedo)
    # The GLB's vertices are the canonical detailed mesh's (split at UV seams).
    src = faces.canonical[0][np.unique(run.model.faces)[:200]]
    d = np.linalg.norm(mesh.vertices[:, None] - src[None], axis=-1).min(0)
    assert d.max() < 1e-6
    g = pygltflib.GLTF2().load(str(out / "a.glb"))
    assert g.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    obj = trimesh.load(out / "a.obj", force="mesh")
    assert len(obj.faces) == len(run.model.faces)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png").convert("RGB")), albedo)
    disp = cv2.imread(str(out / "a_displacement.png"), cv2.IMREAD_UNCHANGED)
    assert disp.dtype == np.uint16 and disp.shape == faces.displacement.shape[1:3]
    back = (disp / 65535.0 * 2.0 - 1.0) * run.max_displacement
    # 16 bits over [-max, max]: half a step of rounding.
    np.testing.assert_allclose(back, faces.displacement[0, ..., 0],
                               atol=run.max_displacement / 65535 + 1e-9)
    strip = np.asarray(Image.open(out / "a_views.png"))
    assert strip.shape == (64, 64 * (1 + len(PAPER_YAWS)), 3)
    codes = np.load(out / "a.npz")
    np.testing.assert_array_equal(codes["w"], faces.w[0])
    np.testing.assert_allclose(codes["code_shape"], faces.codes["shape"][0])
    frames, first = _video(out / "a_turntable.mp4")
    assert first.shape == (64, 64, 3) and frames == len(turntable_yaws())


def test_edit_moves_w_along_the_boundary(tmp_path, run, faces):
    normal = np.zeros(512, np.float32)
    normal[3] = 1.0
    path = tmp_path / "b.npy"
    np.save(path, normal[None] * 2.0)  # InterFaceGAN's (1, 512); normalised on load
    out = tmp_path / "edit"
    code = cli.main(["edit", "--workdir", str(run.workdir), "--w", str(tmp_path / "w.npy"),
                     "--attribute", str(path), "--alpha", "-2", "2", "--out", str(out)])
    assert code == 2  # no such w file: one line, nothing written
    assert not out.exists()
    np.save(tmp_path / "w.npy", faces.w[0, 0])
    paths = edit(run, faces.w[:1], normal, [-2.0, 2.0], out, name="e", video=True,
                 progress=False, size=32)
    saved = np.load(out / "e_plus2p00.npz")
    np.testing.assert_allclose(saved["w"], faces.w[0] + 2.0 * normal, atol=1e-6)
    assert float(saved["alpha"]) == 2.0
    strip = np.asarray(Image.open(out / "e_strip.png"))
    assert strip.shape == (64, 64, 3)
    assert (out / "e_minus2p00.glb").is_file() and out / "e_strip.png" in paths
    frames, first = _video(out / "e.mp4")
    assert first.shape == (32, 64, 3) and frames == len(turntable_yaws())


def test_cli_generate_from_seeds(tmp_path, run, capsys):
    out = tmp_path / "cli"
    assert cli.main(["generate", "--workdir", str(run.workdir), "--seed", "5", "--num", "1",
                     "--out", str(out)]) == 0
    assert (out / "seed0005.glb").is_file() and (out / "seed0005_views.png").is_file()
    np.testing.assert_array_equal(np.load(out / "seed0005.npz")["w"], run.w_from_seeds([5])[0])


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("face3d: error:")
    return err[0]


def test_bad_runs_are_one_line(tmp_path, workdir, capsys):
    gen = lambda wd, *more: ["generate", "--workdir", str(wd), "--seed", "0", "--out",
                             str(tmp_path / "o"), *more]
    assert "no such run folder" in _error(capsys, gen(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "config.json is missing" in _error(capsys, gen(tmp_path / "empty"))

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(workdir, dst, ignore=shutil.ignore_patterns("tensorboard"))
        return dst

    bad = copy("corrupt")
    (bad / "config.json").write_text("{not json")
    assert "config.json: unreadable" in _error(capsys, gen(bad))
    bad = copy("foreign")
    (bad / "config.json").write_text(json.dumps({"model": {}}))
    assert "not a training config" in _error(capsys, gen(bad))
    bad = copy("other")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["albedo"]["channel_max"] *= 2
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "does not match" in _error(capsys, gen(bad))  # names the checkpoint's folder
    bad = copy("old")
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["model"]["encoder"]
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "not readable by this version" in _error(capsys, gen(bad))
    bad = copy("nockpt")
    shutil.rmtree(bad / "checkpoints")
    assert "checkpoints is missing" in _error(capsys, gen(bad))
    assert "no checkpoint for step 7" in _error(capsys, gen(workdir, "--step", "7"))
    np.save(tmp_path / "w.npy", np.zeros((2, 3), np.float32))
    assert "w of shape (2, 3)" in _error(capsys, ["generate", "--workdir", str(workdir), "--w",
                                                  str(tmp_path / "w.npy"), "--out",
                                                  str(tmp_path / "o")])
    msg = _error(capsys, ["edit", "--workdir", str(workdir), "--seed", "0", "--attribute",
                          "smile", "--alpha", "1", "--out", str(tmp_path / "o")])
    assert "no boundary 'smile'" in msg
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- reconstruct


def test_learning_rate_is_rosinalitys_ramp():
    """projector.py's get_lr, written out."""
    from face3d_train.reconstruct import learning_rate

    def get_lr(t, initial_lr, rampdown=0.25, rampup=0.05):
        lr_ramp = min(1, (1 - t) / rampdown)
        lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
        lr_ramp = lr_ramp * min(1, t / rampup)
        return initial_lr * lr_ramp

    for t in (0.0, 0.01, 0.05, 0.3, 0.8, 0.95, 1.0):
        assert float(learning_rate(t, 0.1)) == pytest.approx(get_lr(t, 0.1), abs=1e-7)


def test_inversion_finds_a_teacher_image(run, tmp_path, monkeypatch, capsys):
    """Inverting the source's own image of a w lowers the perceptual + pixel
    loss (the recorded curve: its last step has no latent noise); `reconstruct` writes the
    generate outputs plus the inverted image and the loss curve. dlib cannot
    see a face in the micro world's 32 px images, so its landmarks are the
    teacher's truth here (detection is tested in test_faces.py)."""
    from face3d_train.reconstruct import InversionConfig, reconstruct

    w = run.w_from_seeds([11, 12])
    images, truth = run.source.render(w)
    monkeypatch.setattr(run, "detect", lambda ims: truth[:len(ims)])
    config = InversionConfig(steps=40, mean_samples=2000)
    paths, faces, inv = reconstruct(run, list(images), tmp_path / "rec", names=["p", "q"],
                                    config=config, progress=False, size=32)
    assert inv.losses.shape == (40, 2)
    assert (inv.losses[-1] < 0.8 * inv.losses[0]).all(), inv.losses[[0, -1]]
    assert faces.w.shape == (2, run.n_latent, 512)
    np.testing.assert_allclose(faces.w, inv.w)
    names = {p.name for p in paths}
    assert {"p.glb", "p_inverted.png", "p_loss.png", "q_views.png", "q.npz"} <= names
    assert np.load(tmp_path / "rec" / "q.npz")["losses"].shape == (40,)

    # The command: unreadable and faceless images are one line each.
    (tmp_path / "bad.png").write_bytes(b"not a png")
    msg = _error(capsys, ["reconstruct", str(tmp_path / "bad.png"), "--workdir",
                          str(run.workdir), "--out", str(tmp_path / "o")])
    assert "bad.png: not an image" in msg
    ff.write_png(tmp_path / "grey.png", np.full((64, 64, 3), 128, np.uint8))
    msg = _error(capsys, ["reconstruct", str(tmp_path / "grey.png"), "--workdir",
                          str(run.workdir), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert "grey: dlib finds no face" in msg
    assert not (tmp_path / "o").exists()


def test_now_predictions_are_the_runs_neutral_shape_and_score(run, tmp_path):
    """`face3d predict now` writes, per image, the neutral mesh of E_shape's
    shape code on DECA's crop and NoW's 7 points on it; `face3d eval now`
    scores them against scans. Here the images are the teacher's and the
    scans its true neutral meshes (mm, subdivided so a scan's vertices are
    not the prediction's): end to end through NoW's files. dlib cannot see
    the micro world's 32 px faces, so detection returns the true landmarks
    (as in the inversion test); a grey image stays faceless and is skipped."""
    from face3d_eval import now, now_predict
    from face3d_jax import metrics
    from face3d_jax.teacher import held_out_from_w

    w = run.w_from_seeds([21, 22])
    images, truth = run.source.render(w)
    held = held_out_from_w(run.source.world, w, run.crop_size)
    root, preds, gt = tmp_path / "images", tmp_path / "preds", tmp_path / "now"
    rels = [f"S{i}/multiview_neutral/IMG_{i}.png" for i in range(2)] + ["S0/selfie/grey.png"]
    for rel, image in zip(rels, [*images, np.full_like(images[0], 128)]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ff.write_png(root / rel, image)
    by_pixels = {images[i].tobytes(): truth[i] for i in range(2)}
    run_detect = run.detect
    run.detect = lambda ims: np.stack([by_pixels.get(np.asarray(im).tobytes(),
                                                     np.full((68, 2), np.nan)) for im in ims])
    try:
        res = now_predict.predict_with(run, root, now_predict.list_images(root), preds,
                                       progress=False)
    finally:
        run.detect = run_detect
    assert sorted(res.written) == sorted(rels[:2]) and [r for r, _ in res.skipped] == rels[2:]

    # Each mesh is the neutral mesh of the codes the loader gives the same crop.
    crops = run.crops(images, truth)
    expected = np.asarray(metrics.neutral_vertices(run.model, run.codes(crops)["shape"]))
    for i, rel in enumerate(rels[:2]):
        mesh = trimesh.load(preds / rel.replace(".png", ".obj"), process=False)
        np.testing.assert_allclose(mesh.vertices, expected[i], atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, run.model.faces)
        np.testing.assert_allclose(
            now.read_landmarks(preds / rel.replace(".png", ".npy")),
            np.asarray(metrics.now_landmarks(run.model, expected[i:i + 1]))[0], atol=1e-6)

    # Scans: the truth in mm with its .pp points; NoW's files come out.
    lines = []
    for i in range(2):
        mm = held.neutral[i] * 1000.0
        scan = trimesh.Trimesh(mm, run.model.faces, process=False).subdivide()
        (gt / "scans" / f"S{i}").mkdir(parents=True)
        (gt / "scans_lmks_onlypp" / f"S{i}").mkdir(parents=True)
        scan.export(gt / "scans" / f"S{i}" / "scan.obj")
        lmk = np.asarray(metrics.now_landmarks(run.model, held.neutral[i:i + 1]))[0] * 1000.0
        points = "".join(f'<point x="{x}" y="{y}" z="{z}" name="{j}"/>'
                         for j, (x, y, z) in enumerate(lmk))
        (gt / "scans_lmks_onlypp" / f"S{i}" / "scan.pp").write_text(
            f"<!DOCTYPE PickedPoints><PickedPoints>{points}</PickedPoints>")
        lines.append(rels[i].replace(".png", ".jpg"))
    lines.append("S0/selfie/grey.jpg")
    (gt / "imagepathsvalidation.txt").write_text("\n".join(lines))
    assert cli.main(["eval", "now", "--predictions", str(preds), "--gt", str(gt)]) == 0
    data = np.load(preds / "results" / "RECON_computed_distances.npy",
                   allow_pickle=True).item()
    assert data["num_missing_files"] == 1 and len(data["computed_distances"]) == 2
    # A micro run's shapes are rough but they are faces: errors of millimetres.
    errors = np.hstack(data["computed_distances"])
    assert np.all(np.isfinite(errors)) and 0.01 < np.median(errors) < 20.0
