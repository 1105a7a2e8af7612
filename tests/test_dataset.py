"""`face3d data generate` (dataset.py), its TFDS ArrayRecord output and the
identity-grouped grain loader, on a tiny teacher world (3 identities x 3
images at 64 px). References: the teacher's own renderer, scene and labels,
and its true attribute directions."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from face3d_jax import teacher as tt
from face3d_jax.data import boundaries as bd
from face3d_jax.data import dataset as ds
from face3d_jax.data.dataset_sources import TeacherSource
from face3d_jax.data.loader import make_loader, per_device
from face3d_jax.data.tfds_builder import load_builder
from face3d_jax.faces.crop import crop_matrix, warp_crop

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

BASE = ds.GenerateConfig(identities=3, edits=3, resolution=64, teacher_albedo_size=32,
                         teacher_calibration=256, albedo_size=32, fit_size=64, fit_steps=5,
                         rigid_steps=5, identities_per_shard=1, batch=3, candidates=2)


@pytest.fixture(scope="module")
def source(default_flame):
    return TeacherSource(BASE, default_flame)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, source):
    """BASE with pre-computed boundaries: the teacher's true directions (so the
    edits must keep its identity bit for bit; fitting is tested below)."""
    folder = tmp_path_factory.mktemp("boundaries")
    for name in bd.EDIT_ATTRIBUTES:
        bd.save_boundary(folder / f"{name}.npy", tt.attribute_direction(source.world, name))
    return dataclasses.replace(BASE, boundaries=str(folder))


@pytest.fixture(scope="module")
def first(tmp_path_factory, source, cfg):
    out = tmp_path_factory.mktemp("first")
    return out, ds.generate(cfg, out, progress=False, source=source)


def _records(out):
    src = load_builder(out).as_data_source()["train"]
    return [src[i] for i in range(len(src))]


def _record_files(out):
    folder = out / "face3d_dataset" / "1.0.0"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.array_record*"))}


def test_written_and_read_back(first, source):
    out, result = first
    assert result.images == 9 and result.skipped_no_face == 0 and result.shards_generated == 3
    records = _records(out)
    assert [(int(r["identity"]), int(r["edit"])) for r in records] == [
        (i, e) for i in range(3) for e in range(3)]
    shards = [np.load(out / "work" / f"shard_{s:05d}.npz") for s in range(3)]
    world = source.world
    w = np.stack([r["w"] for r in records])
    # Against the teacher: its images and truth for the stored w (its render,
    # compiled for 3 images), its labels.
    rendered = [source.render(w[i:i + 3]) for i in range(0, 9, 3)]
    images = np.concatenate([r[0] for r in rendered])
    truth = np.concatenate([r[1] for r in rendered])
    labels = tt.labels(world, jnp.asarray(w))
    for i, r in enumerate(records):
        shard = shards[int(r["identity"])]
        e = int(r["edit"])
        for name in ("w", "image", "crop", "albedo", "landmarks_truth"):
            np.testing.assert_array_equal(r[name], shard[name][e])
        assert np.abs(images[i].astype(int) - r["image"]).max() <= 1
        np.testing.assert_allclose(r["landmarks_truth"], truth[i], atol=1e-3)
        np.testing.assert_array_equal(r["landmarks_used"], r["landmarks_truth"])  # truth mode
        for name, value in r["labels"].items():
            np.testing.assert_allclose(value, labels[name][i], rtol=1e-4, atol=1e-4)
        # The stored crop is DECA's crop of the landmarks used.
        crop = warp_crop(r["image"], crop_matrix(r["landmarks_used"], 224), 224)
        assert np.abs(np.round(np.asarray(crop)).astype(int) - r["crop"]).max() <= 1
        assert r["albedo"].shape == (32, 32, 3) and r["albedo"].std() > 1.0


def test_edits_keep_identity_truth(first, source):
    records = _records(first[0])
    sc = tt.scene(source.world, jnp.asarray(np.stack([r["w"] for r in records])))
    for i, r in enumerate(records):
        j = 3 * int(r["identity"])  # the identity's original (edit 0)
        assert int(records[j]["edit"]) == 0
        np.testing.assert_array_equal(sc.shape[i], sc.shape[j])
        np.testing.assert_array_equal(sc.albedo[i], sc.albedo[j])
        if i != j:  # the edit changed expression or pose
            assert max(abs(float(r["labels"][n] - records[j]["labels"][n]))
                       for n in bd.EDIT_ATTRIBUTES) > 1e-3
    assert np.abs(np.asarray(sc.shape[0] - sc.shape[3])).max() > 0.1  # identities differ


def test_resume_redoes_only_missing_work(first, source, cfg):
    out, _ = first
    before = _record_files(out)
    resumed = out.parent / "resumed"
    shutil.copytree(out, resumed)
    # An interrupted run: one shard missing, the dataset not yet written.
    (resumed / "work" / "shard_00001.npz").unlink()
    shutil.rmtree(resumed / "face3d_dataset")
    result = ds.generate(cfg, resumed, progress=False, source=source)
    assert (result.shards_generated, result.shards_skipped) == (1, 2)
    assert _record_files(resumed) == before
    # Finished: a rerun generates nothing and keeps the files.
    again = ds.generate(cfg, resumed, progress=False, source=source)
    assert (again.shards_generated, again.images) == (0, 9)
    with pytest.raises(ValueError, match="other settings"):
        ds.generate(dataclasses.replace(cfg, seed=1), resumed, progress=False, source=source)


def test_deterministic_from_seed(first, source, cfg, tmp_path):
    out, _ = first
    ds.generate(cfg, tmp_path, progress=False, source=source)
    assert _record_files(tmp_path) == _record_files(out)
    for s in range(3):
        a, b = np.load(out / "work" / f"shard_{s:05d}.npz"), np.load(
            tmp_path / "work" / f"shard_{s:05d}.npz")
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_loader_groups_identities_and_shards(first):
    out, _ = first
    records = {(int(r["identity"]), int(r["edit"])): r for r in _records(out)}
    seen = []
    for batch in make_loader(out, identities_per_batch=1, images_per_identity=2, seed=3,
                             shard_options=_shard(0, 1)):
        ids = batch["identity"]
        assert ids.shape == (2,) and ids[0] == ids[1]
        assert batch["edit"][0] != batch["edit"][1]
        for i in range(2):
            ref = records[(int(ids[i]), int(batch["edit"][i]))]
            np.testing.assert_array_equal(batch["image"][i], ref["image"])
        seen.append(int(ids[0]))
    assert sorted(seen) == [0, 1, 2]
    parts = [[int(b["identity"][0]) for b in make_loader(
        out, identities_per_batch=1, images_per_identity=3, seed=0, shard_options=_shard(k, 2))]
        for k in range(2)]
    # Two hosts: disjoint identities, floor(3 / 2) each.
    assert len(parts[0]) == len(parts[1]) == 1 and not set(parts[0]) & set(parts[1])
    batch = next(iter(make_loader(out, identities_per_batch=2, images_per_identity=2, seed=0)))
    split = per_device(batch, 2)["identity"]
    assert split.shape == (2, 2) and (split[:, 0] == split[:, 1]).all()


def _shard(index, count):
    import grain

    return grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)


def test_boundary_fit_recovers_true_direction(source, tmp_path):
    """generate's own fit (InterFaceGAN on the teacher's labels) against the
    teacher's true attribute directions; it saves InterFaceGAN's .npy files."""
    cfg = dataclasses.replace(BASE, boundary_samples=4000)
    normals = ds._boundaries(cfg, source, jax.random.key(0), tmp_path)
    for name in bd.EDIT_ATTRIBUTES:
        true = np.asarray(tt.attribute_direction(source.world, name))
        assert float(normals[name] @ true) > 0.9, name
        saved = np.load(tmp_path / "boundaries" / f"{name}.npy")
        assert saved.shape == (1, 512)
        np.testing.assert_array_equal(saved[0], normals[name])


def test_boundary_file_errors(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="bad.npy"):
        bd.load_boundary(tmp_path / "bad.npy", 512)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        bd.load_boundary(tmp_path / "missing.npy", 512)


def test_stylegan2_faceless_images_are_counted_not_crashing(tmp_path):
    """A tiny random generator in the converted-folder format: dlib finds no
    face in its images, so every image is skipped and counted."""
    from flax import nnx

    from face3d_jax.convert.stylegan2 import CONFIG_FILE, _config_dict, _save
    from face3d_jax.nets.stylegan2 import Generator, StyleGAN2Config

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    gcfg = StyleGAN2Config(resolution=8, style_dim=32, n_mlp=1, channel_max=8)
    _save(ckpt / "g_ema.npz", Generator(gcfg, rngs=nnx.Rngs(0)))
    (ckpt / CONFIG_FILE).write_text(json.dumps({"config": _config_dict(gcfg)}))
    for i, name in enumerate(bd.EDIT_ATTRIBUTES):
        bd.save_boundary(tmp_path / "b" / f"{name}.npy", np.random.default_rng(i).normal(size=32))
    cfg = ds.GenerateConfig(source="stylegan2", checkpoint=str(ckpt), boundaries=str(
        tmp_path / "b"), identities=2, edits=2, albedo_size=16, fit_size=32, fit_steps=2,
        rigid_steps=2, identities_per_shard=1, batch=2)
    with pytest.raises(RuntimeError, match="4 skipped"):
        ds.generate(cfg, tmp_path / "out", progress=False)
    counts = [json.loads((tmp_path / "out" / "work" / f"shard_{s:05d}.json").read_text())
              for s in range(2)]
    assert [c["skipped_no_face"] for c in counts] == [2, 2]
