"""The shape prior (train/prior.py): MICA's vertex loss, the stage trained once
into the workdir and reused, and its errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_fixtures import micro_config

from face3d_jax import losses as L
from face3d_train import prior as P
from face3d_train.loop import load_model
from face3d_train.state import make_setup


def test_vertex_loss_is_micas_weighted_l1():
    rng = np.random.default_rng(0)
    pred, truth = rng.normal(size=(2, 2, 5, 3)).astype(np.float32) * 1e-3
    weights = np.array([150.0, 1.0, 1.0, 150.0, 0.01], np.float32)
    # MICA: torch.mean(|pred - gt| * mask) * 1000 with the (V, 3) mask of
    # per-vertex weights.
    want = np.mean(np.abs(pred - truth) * weights[None, :, None]) * 1000.0
    got = float(L.vertex_loss(pred, truth, weights))
    assert got == pytest.approx(want, rel=1e-5)
    assert float(L.vertex_loss(pred, truth)) == pytest.approx(
        np.mean(np.abs(pred - truth)) * 1000.0, rel=1e-5)
    with pytest.raises(ValueError, match="vertex_loss"):
        L.vertex_loss(pred[0], truth)


def _prior_config():
    c = micro_config()
    c.prior.update(dict(identities=3, views=2, steps=2, batch=4, chunk=2, lr=1e-4,
                        backbone_lr_scale=0.1))
    return c


def test_no_prior_without_identities_or_with_micas_weights():
    c = _prior_config()
    assert P.prior_settings(c) is not None
    c.model.encoder.weights = "mica.tar"  # the paper's prior: the stage is skipped
    assert P.prior_settings(c) is None
    c = _prior_config()
    c.prior.identities = 0
    assert P.prior_settings(c) is None


def test_the_prior_is_trained_once_into_the_workdir_and_reused(tmp_path):
    config = _prior_config()
    config.prior.steps = 0  # the closed-form head alone
    model = load_model(config)
    setup = make_setup(config, model, jax.random.key(0))
    prior = P.ensure_shape_prior(config, tmp_path, setup, progress=False)
    folder = tmp_path / P.PRIOR_DIR
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["chunk_00000.npz",
                                                                  "chunk_00001.npz"]
    assert json.loads((folder / P.DONE_FILE).read_text())["settings"] == P.prior_settings(config)

    settings = P.prior_settings(config)
    data = P.prior_data(settings, None, folder / "data")  # every chunk exists: no rendering
    assert data["crop"].shape[0] == 6 and data["crop"].dtype == np.uint8
    num = setup.layout.num_shape
    truth = P.pad_shape(data["shape"], num)
    graph = setup.graphs["encoder"]

    def codes(params_and_buffers):
        return np.asarray(nnx.merge(graph, *params_and_buffers)(
            jnp.asarray(data["crop"], jnp.float32) / 255.0))

    out = codes(prior)
    # Ridge regression's squared error on its own samples is at most that of
    # its A = 0 solution (the mean code), which is below the zero code's; the
    # head is not zero, so strictly below.
    assert np.sum((out[:, :num] - truth) ** 2) < np.sum(truth ** 2)
    # Only the shape rows of the head moved: the other codes stay zero.
    assert not np.any(out[:, num:])

    # A rerun reads the prior back, bit for bit, without training again.
    stamp = (folder / P.DONE_FILE).stat().st_mtime_ns
    again = P.ensure_shape_prior(config, tmp_path, setup, progress=False)
    assert (folder / P.DONE_FILE).stat().st_mtime_ns == stamp
    for a, b in zip(jax.tree.leaves(prior), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # A config asking for another prior stops with one line naming the file.
    config.prior.steps = 2
    with pytest.raises(ValueError, match=r"prior\.json was trained with other settings \(steps\)"):
        P.ensure_shape_prior(config, tmp_path, setup, progress=False)

    # A damaged chunk is named, not read.
    chunk = folder / "data" / "chunk_00001.npz"
    good = chunk.read_bytes()
    chunk.write_bytes(good[:100])
    with pytest.raises(ValueError, match=r"chunk_00001\.npz is unreadable .*delete it"):
        P.prior_data(settings, None, folder / "data")
    chunk.write_bytes(good)

    # Unfinished (no prior.json): the stage resumes from its last checkpoint
    # (the solved head, step 0) and runs the Adam steps of MICA's loss.
    (folder / P.DONE_FILE).unlink()
    tuned = P.ensure_shape_prior(config, tmp_path, setup, progress=False)
    moved = codes(tuned)
    assert np.all(np.isfinite(moved)) and not np.array_equal(moved[:, :num], out[:, :num])
    assert not np.any(moved[:, num:])
    assert json.loads((folder / P.DONE_FILE).read_text())["settings"]["steps"] == 2
