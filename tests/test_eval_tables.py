"""`face3d eval identity|diversity|teacher` (face3d_eval.identity_poses,
.diversity, .held_out) on one micro run: the JSONs written and read back,
known answers of the pairwise mesh distance, the identity table's "over crop"
column against the trainer's own eval/id_similarity, the report's tables, and
bad input as one line."""

from __future__ import annotations

import json
import math
import shutil
import types

import ml_collections
import numpy as np
import pytest
from train_fixtures import micro_run

from face3d_eval import diversity as dv
from face3d_eval import held_out as ho
from face3d_eval import identity_poses as ip
from face3d_eval import tables
from face3d_jax import cli
from face3d_train import report as rp

HELD = 4  # held-out identities of the micro run's evaluation (the identity table's N too)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A micro run whose config asks for an evaluation of HELD identities (the
    micro run trains without one; the evaluation reads the config only)."""
    run = micro_run(tmp_path_factory.mktemp("eval_tables"))
    work = run.parent / "evaluated"
    shutil.copytree(run, work)
    config = json.loads((work / "config.json").read_text())
    config["eval"]["identities"] = HELD
    (work / "config.json").write_text(json.dumps(config))
    return work


@pytest.fixture(scope="module")
def identity(workdir):
    return ip.run_identity(workdir, num=HELD, batch=HELD)


@pytest.fixture(scope="module")
def teacher(workdir):
    # Through the command: `face3d eval teacher` writes what run_teacher returns.
    assert cli.main(["eval", "teacher", "--workdir", str(workdir)]) == 0
    return tables.read_result(workdir / "eval" / "teacher.json")


@pytest.fixture(scope="module")
def diversity(workdir):
    return dv.run_diversity(workdir, num=3, batch=2)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# -- the pairwise distance: known answers ------------------------------------

def test_pair_distances_equal_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 50, 3)).astype(np.float32)
    brute = np.linalg.norm(x[:, None] - x[None], axis=-1).mean(-1)
    for block in (1, 3, 7, 64):  # padded last blocks and a single block
        np.testing.assert_allclose(dv.pair_distances(x, block=block), brute, rtol=1e-5,
                                   atol=1e-6)
    iu = np.triu_indices(7, 1)
    assert dv.diversity(x, block=3) == pytest.approx(brute[iu].mean(), rel=1e-5)


def test_identical_meshes_have_zero_diversity():
    x = np.repeat(np.random.default_rng(1).normal(size=(1, 40, 3)), 5, axis=0)
    assert dv.diversity(x, block=2) == 0.0


def test_a_constant_offset_is_the_diversity():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(1, 30, 3))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    d = 0.7
    assert dv.diversity(np.concatenate([base, base + d * direction])) == pytest.approx(d, 1e-5)
    # Three meshes at 0, d, 2d: pairs d, 2d, d.
    three = np.concatenate([base + k * d * direction for k in range(3)])
    assert dv.diversity(three, block=2) == pytest.approx(4 * d / 3, 1e-5)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="at least 2") as err:
        dv.run_diversity(tmp_path, num=1)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected"):
        dv.pair_distances(np.zeros((3, 4)))
    missing = tmp_path / "nope"
    for fn in (ip.run_identity, dv.run_diversity, ho.run_teacher):
        with pytest.raises(FileNotFoundError, match="nope") as err:
            fn(missing)
        assert "\n" not in str(err.value)


def test_a_run_without_a_dataset_says_why(tmp_path):
    config = ml_collections.ConfigDict({"data": {"dataset_dir": str(tmp_path / "gone")}})
    mean, why = ip.dataset_mean_albedo(types.SimpleNamespace(config=config, workdir=tmp_path))
    assert mean is None and "gone" in why


# -- the commands on a micro run ---------------------------------------------

def test_identity_json(workdir, identity):
    data = tables.read_result(workdir / "eval" / "identity.json")
    assert data["name"] == "identity" and data["num"] == HELD and data["step"] == 2
    assert list(data["columns"]) == ["same_pose", "yaw_0", "yaw_15", "yaw_30", "yaw_45",
                                     "over_crop"]
    assert data["unavailable"] == {}  # the micro run's dataset is there: every row
    assert set(data["similarity"]) == {"F"}  # no teacher-world head in the micro config
    sims = data["similarity"]["F"]
    assert set(sims) == set(ip.ROWS)
    for row in sims.values():
        assert all(_finite(v) and -1.0 <= v <= 1.0 for v in row.values())
    per = data["per_identity"]["F"]["ours"]["yaw_30"]
    assert len(per) == HELD
    text = ip.format_table(identity)
    assert "| albedo | same pose | 0° | ±15° | ±30° | ±45° | over crop |" in text


def test_over_crop_is_the_trainers_identity_similarity(identity, teacher):
    """The same N identities (eval.seed), the trainer's render over the crop
    and F's alignment: the column equals eval/id_similarity and, with the
    mean A_GT in G_Ab's place, eval/id_similarity_mean_albedo."""
    sims = identity["similarity"]["F"]
    m = teacher["metrics"]
    assert sims["ours"]["over_crop"] == pytest.approx(m["eval/id_similarity"], abs=2e-4)
    assert sims["mean_a_gt"]["over_crop"] == pytest.approx(
        m["eval/id_similarity_mean_albedo"], abs=2e-4)


def test_a_render_against_itself_is_one(workdir, identity):
    """F's cosine of an image with itself is 1 through the same alignment."""
    from face3d_train.models import identity_network
    from face3d_train.trained import read_run_config

    config = read_run_config(workdir)  # no head: the micro config fits none
    embed = ip.FaceEmbedder(identity_network(config.model))
    size = int(config.data.generate.crop_size)
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(2, size, size, 3)).astype(np.float32)
    lmk = (rng.uniform(0.3, 0.7, (68, 2)) * size).astype(np.float32)
    lmk = np.stack([lmk, lmk])
    a, fa = embed(images, lmk)
    _b, fb = embed(images.copy(), lmk.copy())
    np.testing.assert_allclose(ip.cosine(fa, fb), 1.0, atol=1e-6)
    assert ip.cosine(a, np.zeros_like(a)).tolist() == [0.0, 0.0]


def test_teacher_json(workdir, teacher):
    data = tables.read_result(workdir / "eval" / "teacher.json")
    assert data["name"] == "teacher" and data["num"] == HELD and data["step"] == 2
    m = data["metrics"]
    for name in ("eval/shape_error_now_mm", "eval/albedo_psnr", "eval/id_similarity",
                 "eval/albedo_psnr_mean_baseline"):
        assert _finite(m[name]), name
    assert -1.0 <= m["eval/id_similarity"] <= 1.0
    now = data["now"]
    assert set(now) == {"ours", "mean_face", "ours_metrical", "mean_face_metrical"}
    for stats in now.values():
        assert all(_finite(stats[k]) and stats[k] >= 0 for k in ("median", "mean", "std"))
        assert stats["points"] > 100 * HELD


def test_diversity_json(workdir, diversity):
    data = tables.read_result(workdir / "eval" / "diversity.json")
    assert data["name"] == "diversity" and data["num"] == 3
    assert set(data["diversity_mm"]) == {"ours", "teacher"}
    for row in data["diversity_mm"].values():
        assert set(row) == set(dv.COLUMNS)
        assert all(_finite(v) and v >= 0 for v in row.values())
    # The teacher's true shapes differ: its neutral meshes are diverse.
    assert data["diversity_mm"]["teacher"]["neutral"] > 0.1


def test_report_shows_the_tables(workdir, identity, teacher, diversity, tmp_path):
    text = rp.eval_results_html(workdir)
    for title in ("Table 4", "Table 3", "NoW protocol"):
        assert title in text
    assert text.count("<table") == 4  # identity (F only), diversity, held-out, NoW
    # A row that could not be computed says why, across the value columns.
    result = dict(identity)
    result["unavailable"] = {"mean_a_gt": "no dataset folder X"}
    table = ip.display_tables(result)[0]
    html_table = rp.result_table_html(table)
    assert 'colspan="6" class="why">no dataset folder X' in html_table
    # An unreadable JSON is one sentence, not a crash.
    broken = tmp_path / "run"
    (broken / "eval").mkdir(parents=True)
    (broken / "eval" / "teacher.json").write_text("{")
    assert "unreadable" in rp.eval_results_html(broken)
    assert rp.eval_results_html(tmp_path) == ""
