"""The trainer's held-out evaluation (train/evaluation.py) on the micro config.

At step 0 E_shape's head is zero, so its codes are those of the mean face
framed by the crop prior: the shape error, the landmark error and the camera
scale are computed here from FLAME, the held-out truth and DECA's projection
written out, not through the evaluation's own code path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import micro_config, write_dataset

from face3d_jax import metrics
from face3d_jax.flame import flame_forward
from face3d_train.evaluation import HeldOutEval
from face3d_train.loop import Trainer, load_model, make_mesh


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_data")
    # write_dataset's records, as stored (its shard file, before TFDS).
    return write_dataset(folder), np.load(folder / "work" / "shard_00000.npz")


@pytest.fixture(scope="module")
def run(data):
    config = micro_config(data[0])
    config.selector = "phase"
    trainer = Trainer(config, load_model(config), make_mesh(jax.devices()[:1]))
    return trainer, HeldOutEval(trainer, config, dataset=data[0]), trainer.init_state()


def _mean_face(model, count):
    z = lambda n: jnp.zeros((count, n), jnp.float32)
    return flame_forward(model, z(1), z(1), z(3), z(3), z(3), z(6))


def test_step_zero_scores_the_mean_face(run):
    trainer, held, state = run
    got = held.evaluate(state)
    truth = held.held
    n, crop = truth.count, truth.crop.shape[1]
    mean = _mean_face(trainer.model, n)

    want_shape = np.mean(np.asarray(metrics.mesh_error_mm(mean.vertices, truth.neutral, scale=True)))
    np.testing.assert_allclose(got["eval/shape_error_mm"], want_shape, rtol=1e-4)
    want_metric = np.mean(np.asarray(metrics.mesh_error_mm(mean.vertices, truth.neutral)))
    np.testing.assert_allclose(got["eval/shape_error_metric_mm"], want_metric, rtol=1e-4)
    face = metrics.now_face_mask(trainer.model, truth.neutral)
    want_now = np.mean(np.asarray(metrics.mesh_error_mm(mean.vertices, truth.neutral, scale=True,
                                                   mask=face)))
    np.testing.assert_allclose(got["eval/shape_error_now_mm"], want_now, rtol=1e-4)
    np.testing.assert_allclose(got["eval/shape_error_now_mm_mean_face"], want_now, rtol=1e-4)
    assert want_now != pytest.approx(want_shape, rel=1e-2)  # the region is not the head

    # DECA's batch_orth_proj: s * (X + t), y flipped, NDC -> pixels.
    s, tx, ty = (float(v) for v in trainer.setup.camera_prior)
    lmk = np.asarray(mean.landmarks, np.float64)
    ndc = s * (lmk[..., :2] + np.array([tx, ty]))
    px = np.stack([(ndc[..., 0] + 1) * 0.5 * crop, (1 - ndc[..., 1]) * 0.5 * crop], axis=-1)
    want_lmk = np.mean(np.linalg.norm(px - truth.landmarks, axis=-1))
    np.testing.assert_allclose(got["eval/landmark_px"], want_lmk, rtol=1e-4)
    assert got["eval/camera_scale"] == pytest.approx(1.0, abs=1e-6)
    assert all(np.isfinite(v) for v in got.values())


def test_camera_scale_follows_the_predicted_scale(run):
    trainer, held, state = run
    layout = trainer.setup.layout
    at = layout.num_shape + layout.num_expression + 6  # the camera's s (log offset)
    params = jax.tree.map(lambda x: x, state.shape.params)  # new Variables, same arrays
    bias = params["encoder"]["head"]["bias"]
    bias[...] = bias[...].at[at].set(np.log(0.5))
    got = held.evaluate(state.replace(shape=state.shape.replace(params=params)))
    assert got["eval/camera_scale"] == pytest.approx(0.5, rel=1e-5)
    # A face drawn at half size lands far from the truth's landmarks.
    assert got["eval/landmark_px"] > held.evaluate(state)["eval/landmark_px"]


def test_mean_baseline_is_the_training_sets_mean_albedo(run, data):
    trainer, held, state = run
    got = held.evaluate(state)
    # Every record's A_GT (uint8 / 255), averaged; PSNR over the face texels
    # against each held-out truth (the same size here: no resize), then averaged.
    mean = data[1]["albedo"].astype(np.float64).mean(axis=0) / 255.0
    np.testing.assert_allclose(held.mean_albedo, mean, atol=1e-6)
    truth = np.asarray(held.held.albedo, np.float64)
    face = metrics.face_uv_mask(trainer.model, truth.shape[1])
    mse = ((mean[None] - truth) ** 2)[:, face].mean(axis=(1, 2))
    want = np.mean(10.0 * np.log10(1.0 / mse))
    np.testing.assert_allclose(got["eval/albedo_psnr_mean_baseline"], want, rtol=1e-4)
    # The held-out identities are not the training set's: the mean misses them.
    assert 5.0 < want < 30.0


def test_id_similarity_renders_differ_only_in_albedo(run):
    trainer, held, state = run
    got = held.evaluate(state)
    # The identity term's cosine, read the other way round.
    assert got["eval/id_similarity"] == pytest.approx(1.0 - got["eval/identity"], abs=1e-6)
    saved = held.mean_albedo
    try:
        # G_Ab's own albedos as the "mean": the two renders are then the same.
        own = held._outputs(state, held._batch()).albedo
        held.mean_albedo = np.asarray(own)
        same = held.evaluate(state)
        assert same["eval/id_similarity_mean_albedo"] == pytest.approx(
            same["eval/id_similarity"], abs=1e-5)
        assert same["eval/albedo_psnr_mean_baseline"] == pytest.approx(got["eval/albedo_psnr"],
                                                                       abs=1e-4)
        # F tells a face's true colours from a flat grey on the same render.
        held.mean_albedo = np.asarray(held.held.albedo)
        truth = held.evaluate(state)["eval/id_similarity_mean_albedo"]
        held.mean_albedo = np.full_like(saved, 0.5)
        grey = held.evaluate(state)["eval/id_similarity_mean_albedo"]
        assert truth > grey
    finally:
        held.mean_albedo = saved


def test_id_similarity_with_any_albedo_is_the_evaluations(run):
    """`HeldOutEval.id_similarity` (face3d_eval.albedo_probe --workdir) scores
    what the evaluation scores: with no albedo G_Ab's, with the true maps
    what the mean-albedo metric gives when the 'mean' is the truth."""
    trainer, held, state = run
    got = held.evaluate(state)
    assert held.id_similarity(state) == pytest.approx(got["eval/id_similarity"], abs=1e-5)
    saved = held.mean_albedo
    try:
        held.mean_albedo = np.asarray(held.held.albedo)
        want = held.evaluate(state)["eval/id_similarity_mean_albedo"]
    finally:
        held.mean_albedo = saved
    truth = jnp.asarray(held.held.albedo)
    assert held.id_similarity(state, truth) == pytest.approx(want, abs=1e-5)
