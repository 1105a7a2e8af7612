"""Checkpoints (train/checkpoint.py) and metric logs (train/metrics.py).

References are independent of the modules: numpy copies of the saved state,
the step folders on disk, the raw metrics.jsonl lines through `json`, and the
TensorBoard event files decoded record by record with tensorboardX's protos
and PIL.
"""

from __future__ import annotations

import io
import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from face3d_train.checkpoint import Checkpointer
from face3d_train.metrics import MetricWriter, read_metrics


# ---------------------------------------------------------------- checkpoints


def _state(scale: float, step: int, impl: str = "threefry2x32"):
    params = {"w": jnp.arange(12.0).reshape(3, 4) * scale, "b": jnp.full((4,), -scale)}
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-zero moments, count 1
    return {"params": params, "opt": opt_state, "step": jnp.int32(step),
            "key": jax.random.split(jax.random.key(step, impl=impl), 3)}


def _host(tree):
    """numpy copies, keys as (dtype name, key data), for exact comparison."""
    def leaf(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return (str(x.dtype), np.asarray(jax.random.key_data(x)))
        return (str(x.dtype), np.asarray(x))
    return jax.tree.map(leaf, tree)


def _assert_same(got, want):
    pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)  # noqa: E731
    got = _host(got)
    assert jax.tree.structure(got, is_leaf=pair) == jax.tree.structure(want, is_leaf=pair)
    for (gd, gv), (wd, wv) in zip(jax.tree.leaves(got, is_leaf=pair),
                                  jax.tree.leaves(want, is_leaf=pair)):
        assert gd == wd
        np.testing.assert_array_equal(gv, wv)


def _step_dirs(path):
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def test_roundtrip_keep_and_latest(tmp_path):
    ref = {}
    with Checkpointer(tmp_path / "ckpt", keep=2, save_every=2, async_save=True) as ck:
        assert ck.latest_step() is None
        for step in range(7):
            state = _state(1.0 + step, step)
            saved = ck.save(step, state, {"loader": {"epoch": 1, "pos": step}, "config": "tiny"})
            assert saved == (step % 2 == 0)
            if saved:
                ref[step] = _host(state)
                # save returns after the host copy: donating the buffers is safe
                for x in jax.tree.leaves(state):
                    x.delete()
        assert ck.save(7, _state(8.0, 7), {"why": "preempted"}, force=True)
        assert not ck.save(7, _state(9.0, 7), {}, force=True)  # already on disk
        ck.wait()
        assert _step_dirs(tmp_path / "ckpt") == [6, 7]
        assert ck.latest_step() == 7

        abstract = jax.eval_shape(lambda: _state(0.0, 0))
        state, meta = ck.restore(abstract, step=6)
        _assert_same(state, ref[6])
        assert meta == {"loader": {"epoch": 1, "pos": 6}, "config": "tiny"}
        assert isinstance(state["opt"][0], optax.ScaleByAdamState)
        assert int(state["opt"][0].count) == 1

        state, meta = ck.restore(abstract)
        assert meta == {"why": "preempted"}
        assert int(state["step"]) == 7 and float(state["params"]["w"][0, 1]) == 8.0
        # the restored key draws what the saved key draws
        want = jax.random.normal(jax.random.split(jax.random.key(7), 3)[1], (5,))
        np.testing.assert_array_equal(jax.random.normal(state["key"][1], (5,)), want)

    # a new process (new Checkpointer) sees the same steps
    with Checkpointer(tmp_path / "ckpt", keep=2, save_every=2) as ck:
        assert ck.latest_step() == 7
        _assert_same(ck.restore(abstract, step=6)[0], ref[6])


def test_read_only_touches_nothing(tmp_path):
    """A reader of a run being trained (`face3d generate`) must not clean up
    the trainer's unfinished write nor delete old steps."""
    with Checkpointer(tmp_path / "ckpt", keep=3, save_every=1, async_save=False) as ck:
        for step in (1, 2):
            ck.save(step, _state(float(step), step), {"step": step})
    unfinished = tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-123"
    unfinished.mkdir()
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    abstract = jax.eval_shape(lambda: _state(0.0, 0))
    with Checkpointer(tmp_path / "ckpt", keep=1, save_every=1, read_only=True) as ck:
        assert ck.all_steps() == [1, 2]
        state, meta = ck.restore(abstract)
        assert meta == {"step": 2}
        with pytest.raises(RuntimeError, match="read-only"):
            ck.save(4, state, {})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        Checkpointer(tmp_path / "none", save_every=1, read_only=True)
    assert not (tmp_path / "none").exists()


def test_relative_directory(tmp_path, monkeypatch):
    # `face3d train --workdir runs/tiny`: orbax's array writer needs an
    # absolute path, an async save must not fail in its background thread.
    monkeypatch.chdir(tmp_path)
    state = _state(2.0, 4)
    with Checkpointer("runs/ckpt", keep=1, save_every=1) as ck:
        assert ck.save(4, state, {"pos": 4})
        ck.wait()
        restored, meta = ck.restore(jax.eval_shape(lambda: _state(0.0, 0)))
    assert _step_dirs(tmp_path / "runs" / "ckpt") == [4] and meta == {"pos": 4}
    _assert_same(restored, _host(state))


def test_restore_into_target_sharding(tmp_path):
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    n = len(devices)
    state = {"w": jnp.arange(2.0 * n * 3).reshape(2 * n, 3),
             "key": jax.random.split(jax.random.key(1, impl="rbg"), n),
             "step": jnp.int32(11)}
    ref = _host(state)
    shardings = {"w": NamedSharding(mesh, P("data")), "key": NamedSharding(mesh, P("data")),
                 "step": NamedSharding(mesh, P())}
    # saved unsharded (device 0), restored sharded: the target's layout wins
    with Checkpointer(tmp_path, save_every=1, async_save=False) as ck:
        ck.save(11, state, {})
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                jax.eval_shape(lambda: state), shardings)
        got, _ = ck.restore(abstract)
    _assert_same(got, ref)
    for name, sharding in shardings.items():
        assert got[name].sharding.is_equivalent_to(sharding, got[name].ndim), name
    assert len(got["w"].sharding.device_set) == n


def _saved(tmp_path):
    ck = Checkpointer(tmp_path / "ck", save_every=1, async_save=False)
    state = {"w": jnp.arange(40.0).reshape(10, 4), "step": jnp.int32(3)}
    ck.save(3, state, {"a": 1})
    return ck, jax.eval_shape(lambda: state)


def test_corrupt_checkpoint_is_one_line_value_error(tmp_path):
    ck, abstract = _saved(tmp_path)
    data = [p for p in (tmp_path / "ck" / "3").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        ck.restore(abstract)
    msg = str(err.value)
    assert str(tmp_path / "ck" / "3") in msg and "\n" not in msg

    (tmp_path / "ck" / "3" / "state" / "_METADATA").write_bytes(b"\xff{garbage")
    with pytest.raises(ValueError, match="unreadable") as err:
        ck.restore(abstract)
    assert str(tmp_path / "ck" / "3") in str(err.value) and "\n" not in str(err.value)
    ck.close()


def test_mismatched_tree_is_value_error(tmp_path):
    ck, abstract = _saved(tmp_path)
    S = jax.ShapeDtypeStruct
    cases = [
        ({**abstract, "extra": S((2,), jnp.float32)}, "extra"),
        ({"w": abstract["w"]}, "step"),
        ({**abstract, "w": S((10, 5), jnp.float32)}, r"w shape saved \(10, 4\) vs \(10, 5\)"),
        ({**abstract, "step": S((), jnp.float32)}, "step dtype"),
        ({**abstract, "step": jax.eval_shape(lambda: jax.random.key(0))}, "step"),
    ]
    for bad, what in cases:
        with pytest.raises(ValueError, match=what) as err:
            ck.restore(bad)
        assert str(tmp_path / "ck" / "3") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        ck.restore(abstract, step=4)
    with pytest.raises(ValueError, match="not JSON"):
        ck.save(5, {"w": jnp.zeros(2)}, {"x": math.nan})
    with Checkpointer(tmp_path / "empty", save_every=1) as empty, \
            pytest.raises(FileNotFoundError, match="no checkpoint"):
        empty.restore(abstract)
    ck.close()


# ---------------------------------------------------------------- metrics


def _events(logdir):
    """All Event protos of the TFRecord files under logdir (length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            events.append(Event.FromString(raw[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    with MetricWriter(tmp_path / "run", enabled=True) as w:
        w.scalars(0, {"loss": 1.5, "lr": jnp.float32(0.25)})
        w.scalars(10, {"loss": math.nan, "grad": np.float64(-math.inf), "n": jnp.array([3])})
        img = np.zeros((2, 3, 4, 1), np.float32)
        img[0, 0, 0, 0], img[1, 2, 3, 0], img[0, 1, 1, 0] = 2.0, 1.0, math.nan
        w.images(10, {"albedo": img, "rgb": -np.ones((1, 2, 2, 3))})
        with pytest.raises(ValueError, match="'bad'"):
            w.scalars(11, {"bad": np.ones(2)})
        with pytest.raises(ValueError, match="'x'"):
            w.images(11, {"x": np.ones((2, 2, 2))})

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 0, "loss": 1.5, "lr": 0.25},
        {"step": 10, "loss": None, "grad": None, "n": 3.0}]
    assert read_metrics(tmp_path / "run") == [json.loads(line) for line in lines]

    events = _events(tmp_path / "run" / "tensorboard")
    scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value
               if v.HasField("simple_value")]
    assert scalars[:2] == [(0, "loss", 1.5), (0, "lr", 0.25)]
    assert [(s, t) for s, t, _ in scalars[2:]] == [(10, "loss"), (10, "grad"), (10, "n")]
    assert math.isnan(scalars[2][2]) and scalars[3][2] == -math.inf and scalars[4][2] == 3.0
    images = {v.tag: np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)).convert("RGB"))
              for e in events for v in e.summary.value if v.HasField("image")}
    # a B=2 batch of 3x4 gray images -> one 3x8 RGB grid, clipped, NaN -> 0
    want = np.zeros((3, 8, 3), np.uint8)
    want[0, 0], want[2, 7] = 255, 255
    np.testing.assert_array_equal(images["albedo"], want)
    np.testing.assert_array_equal(images["rgb"], np.zeros((2, 2, 3), np.uint8))


def test_read_metrics_truncated_tail_and_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1.0}\n{"step": 1, "a": 2.0}\n{"step": 2, "a"')
    assert read_metrics(path) == [{"step": 0, "a": 1.0}, {"step": 1, "a": 2.0}]
    # a resumed writer drops the fragment instead of gluing a record onto it
    with MetricWriter(tmp_path, enabled=True) as w:
        w.scalars(2, {"a": 3.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 0, "a": 1.0}, {"step": 1, "a": 2.0}, {"step": 2, "a": 3.0}]
    path.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nothing.jsonl")


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricWriter(tmp_path / "run", enabled=False) as w:
        w.scalars(0, {"loss": 1.0})
        w.images(0, {"x": np.zeros((1, 2, 2, 3))})
    assert not (tmp_path / "run").exists()
    assert MetricWriter(tmp_path / "p0").enabled == (jax.process_index() == 0)


def test_roundtrip_flax_struct_and_nnx_state(tmp_path):
    """The trainer's layout: a flax struct.dataclass holding nnx.State and optax states."""
    from flax import nnx, struct

    @struct.dataclass
    class TrainState:
        step: jax.Array
        key: jax.Array
        params: nnx.State
        opt_state: optax.OptState

    params = nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    state = TrainState(jnp.int32(4), jax.random.key(2), params, optax.adam(1e-3).init(params))
    with Checkpointer(tmp_path, save_every=1) as ck:
        ck.save(4, state, {})
        got, _ = ck.restore(jax.eval_shape(lambda: state))
    assert isinstance(got, TrainState) and isinstance(got.params, nnx.State)
    _assert_same(got, _host(state))


def test_a_failed_write_is_one_line_os_error(tmp_path):
    # The checkpoint folder replaced by a file: orbax's writer fails and the
    # trainer sees one line naming the folder. Written synchronously: a failed
    # async write goes through the same wrapper (at the next save or wait), but
    # orbax's signalling threads then hold the process for 300 s at exit.
    folder = tmp_path / "ck"
    ck = Checkpointer(folder, save_every=1, async_save=False)
    folder.rmdir()
    folder.write_text("not a folder")
    with pytest.raises(OSError, match=r"^checkpoint write under .*ck failed: ") as err:
        ck.save(1, {"w": jnp.ones((3,))}, {})
        ck.wait()
    assert "\n" not in str(err.value)
    ck.close()  # the failure was reported once; closing releases the threads
