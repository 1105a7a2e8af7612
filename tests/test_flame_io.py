"""FLAME asset I/O: round trips, the official formats (chumpy, sparse, torch
tensors) without their libraries, and one clear error per kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from flame_fixtures import tiny_model

from face3d_jax import formats
from face3d_jax.flame import io
from face3d_jax.flame.files import ROOT_PARENT
from face3d_jax.flame.writer import write_flame_files

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_same_model(a, b):
    for name in io.ARRAY_FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)),
                                      err_msg=name)
    assert a.parents == b.parents


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture
def flame_dir(model, tmp_path):
    out = tmp_path / "flame"
    write_flame_files(model, out)
    return out


def generic_dict(model, **overrides):
    """A plain-numpy generic_model dict, as smplx and our writer see it."""
    data = {
        "v_template": np.asarray(model.v_template, np.float64),
        "f": np.asarray(model.faces, np.uint32),
        "shapedirs": np.concatenate([model.shapedirs, model.exprdirs], 2).astype(np.float64),
        "posedirs": np.asarray(model.posedirs, np.float64),
        "J_regressor": scipy.sparse.csc_matrix(np.asarray(model.J_regressor, np.float64)),
        "weights": np.asarray(model.weights, np.float64),
        "kintree_table": np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------- round trips


def test_write_flame_files_then_load_round_trips(model, flame_dir):
    names = sorted(p.name for p in flame_dir.iterdir())
    assert names == sorted(["generic_model.pkl", "FLAME_NEUTRAL.pkl", "flame_static_embedding.pkl",
                            "flame_dynamic_embedding.npy", "head_template.obj"])
    loaded = io.load(flame_dir)
    assert_same_model(loaded, model)
    assert loaded.v_template.dtype == np.float32 and loaded.faces.dtype == np.int32
    # A .pkl path finds its neighbours too.
    assert_same_model(io.load(flame_dir / "FLAME_NEUTRAL.pkl"), model)


def test_save_npz_then_load_round_trips(model, tmp_path):
    path = io.save_npz(model, tmp_path / "m.npz")
    assert path == tmp_path / "m.npz" and not (tmp_path / "manifest.json").exists()
    loaded = io.load(path)
    assert_same_model(loaded, model)
    assert loaded.source == model.source


def test_import_flame_writes_npz_and_manifest(model, flame_dir, tmp_path):
    npz = io.import_flame(flame_dir, tmp_path / "out")
    assert npz == tmp_path / "out" / "flame_model.npz"
    assert_same_model(io.load(npz), model)
    assert_same_model(io.load(tmp_path / "out"), model)  # a folder with our npz
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format"] == io.FORMAT_TAG
    assert manifest["created_by"].startswith("face3d-jax ")
    assert manifest["counts"] == {"vertices": 60, "faces": 100, "shape_components": 300,
                                  "expression_components": 100, "uv_coords": 70}
    files = {s["file"]: s for s in manifest["sources"]}
    assert set(files) == {"generic_model.pkl", "flame_static_embedding.pkl",
                          "flame_dynamic_embedding.npy", "head_template.obj"}
    for name, entry in files.items():
        data = (flame_dir / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


def test_obj_faces_in_another_order_are_matched(model, flame_dir):
    lines = (flame_dir / "head_template.obj").read_text().splitlines()
    faces = [ln for ln in lines if ln.startswith("f ")]
    rng = np.random.default_rng(3)
    shuffled = []
    for i in rng.permutation(len(faces)):
        corners = faces[i].split()[1:]
        k = int(rng.integers(3))
        shuffled.append("f " + " ".join(corners[k:] + corners[:k]))  # same winding, rotated
    others = [ln for ln in lines if not ln.startswith("f ")]
    (flame_dir / "head_template.obj").write_text("\n".join(others + shuffled) + "\n")
    assert_same_model(io.load(flame_dir), model)


def test_flame_texture_npz_gives_the_uv_layout(model, flame_dir):
    (flame_dir / "head_template.obj").unlink()
    np.savez(flame_dir / "FLAME_texture.npz", vt=model.uv_coords, ft=model.uv_faces,
             mean=np.zeros((4, 4, 3)), tex_dir=np.zeros((4, 4, 3, 2)))
    assert_same_model(io.load(flame_dir), model)


def test_model_without_expression_space_loads(model, flame_dir):
    small = generic_dict(model, shapedirs=np.asarray(model.shapedirs[:, :, :20], np.float64))
    with open(flame_dir / "generic_model.pkl", "wb") as f:
        pickle.dump(small, f, protocol=2)
    loaded = io.load(flame_dir)
    assert (loaded.num_shape, loaded.num_expression) == (20, 0)


# ---------------------------------------------------------------- official formats


def _pickle_with_fake_chumpy(make_data, protocol):
    """Pickles make_data(Ch, Expr) with stand-in `chumpy` modules registered,
    then removes them, so the loader runs without any chumpy."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "chumpy"}
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy.ch.Ch: pickles its __dict__ minus weak references
        def __init__(self, x=None, **terms):
            if x is not None:
                self.x = np.asarray(x)
            self.__dict__.update(terms)
            self._dirty_vars, self._itr, self._parents, self._cache = set(), None, {}, {}

        def __getstate__(self):
            state = dict(self.__dict__)
            del state["_parents"], state["_cache"]
            return state

    class MatVecMult(Ch):  # a chumpy expression: operands, no stored 'x'
        pass

    for cls in (Ch, MatVecMult):
        cls.__module__, cls.__qualname__ = "chumpy.ch", cls.__name__
        setattr(ch, cls.__name__, cls)
    chumpy.ch, chumpy.Ch = ch, Ch
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        return pickle.dumps(make_data(Ch, MatVecMult), protocol=protocol)
    finally:
        for name in ("chumpy", "chumpy.ch"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.mark.parametrize("protocol", [1, 2])
def test_chumpy_generic_model_loads_without_chumpy(model, flame_dir, protocol):
    def make(Ch, MatVecMult):
        data = generic_dict(model)
        for key in ("v_template", "shapedirs", "posedirs", "weights"):
            data[key] = Ch(data[key])
        data["J"] = MatVecMult(a=data["v_template"], mtx=data["J_regressor"])
        return data

    (flame_dir / "generic_model.pkl").write_bytes(_pickle_with_fake_chumpy(make, protocol))
    assert "chumpy" not in sys.modules
    raw = io.read_generic_model(flame_dir / "generic_model.pkl")
    assert raw["shapedirs"].shape == (60, 3, 400) and raw["J_regressor"].shape == (5, 60)
    assert_same_model(io.load(flame_dir), model)


def _binstring(text) -> bytes:
    data = text.encode("latin1") if isinstance(text, str) else text
    return b"U" + bytes([len(data)]) + data


def test_python2_style_pickle_loads():
    """Python 2 wrote str (not bytes) for array data and named __builtin__."""
    raw = np.array([1.5, -2.0]).tobytes()
    data = (b"\x80\x02}q\x00(" + _binstring("x")
            + b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
            + _binstring("b") + b"\x87Rq\x03(K\x01K\x02\x85cnumpy\ndtype\nq\x04" + _binstring("f8")
            + b"K\x00K\x01\x87Rq\x05(K\x03" + _binstring("<")
            + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _binstring(raw) + b"tb"
            + _binstring("s") + b"c__builtin__\nset\n]K\x01a\x85R"
            + _binstring("c") + b"cchumpy.ch\nCh\n)\x81}" + _binstring("x") + b"h\x03sb"
            + b"u.")
    out = formats.load_pickle(data, what="py2.pkl")
    np.testing.assert_array_equal(out["x"], [1.5, -2.0])
    np.testing.assert_array_equal(out["c"], [1.5, -2.0])
    assert out["s"] == {1}


def test_chumpy_expression_needed_as_array_is_reported(model, tmp_path):
    def make(Ch, MatVecMult):
        return generic_dict(model, v_template=MatVecMult(a=np.zeros(3)))

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_pickle_with_fake_chumpy(make, 2))
    with pytest.raises(ValueError, match="'v_template' is a chumpy expression"):
        io.read_generic_model(path)


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
from face3d_jax.flame import io
from face3d_jax import formats
deca = io.read_deca_landmark_embedding(sys.argv[1])
extra = formats.load_npy(sys.argv[2])
assert sys.modules["torch"] is None
extra = {"x_" + k: np.asarray(v, np.float32) if v.dtype.name == "bfloat16" else v
         for k, v in extra.items()}
np.savez(sys.argv[3], **deca, **extra)
"""


def test_deca_landmark_embedding_loads_without_torch(model, tmp_path):
    torch = pytest.importorskip("torch")
    i64 = lambda a: np.asarray(a, np.int64)  # noqa: E731
    deca = {
        "static_lmk_faces_idx": i64(model.static_lmk_faces_idx),
        "static_lmk_bary_coords": np.asarray(model.static_lmk_bary_coords),
        "dynamic_lmk_faces_idx": torch.tensor(i64(model.dynamic_lmk_faces_idx)),
        "dynamic_lmk_bary_coords": torch.tensor(np.asarray(model.dynamic_lmk_bary_coords)),
        "full_lmk_faces_idx": np.zeros((1, 68), np.int64),
        "full_lmk_bary_coords": np.zeros((1, 68, 3), np.float32),
    }
    np.save(tmp_path / "landmark_embedding.npy", deca, allow_pickle=True)
    big = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    extra = {  # views (offset, strides) and the dtypes torch writes differently
        "view": big[1:, ::2].t(), "half": torch.linspace(0, 1, 5).half(),
        "int32": torch.tensor([[-1, 2], [3, 4]], dtype=torch.int32),
        "bool": torch.tensor([True, False, True]), "bf16": torch.tensor([1.5, -2.0]).bfloat16(),
        "uint16": torch.tensor([1, 2, 65535], dtype=torch.int32).to(torch.uint16),  # _v3
        "empty": torch.zeros(0, 3),
    }
    np.save(tmp_path / "extra.npy", extra, allow_pickle=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "landmark_embedding.npy"),
         str(tmp_path / "extra.npy"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    for key in ("static_lmk_faces_idx", "static_lmk_bary_coords"):
        np.testing.assert_array_equal(out[key], deca[key])
    for key in ("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords"):
        np.testing.assert_array_equal(out[key], deca[key].numpy())
    for key, tensor in extra.items():
        want = tensor.float().numpy() if key == "bf16" else tensor.numpy()
        np.testing.assert_array_equal(out["x_" + key], want, err_msg=key)
        assert out["x_" + key].dtype == want.dtype, key


def test_deca_embedding_folder_loads(model, flame_dir):
    torch = pytest.importorskip("torch")
    deca = {
        "static_lmk_faces_idx": np.asarray(model.static_lmk_faces_idx, np.int64),
        "static_lmk_bary_coords": np.asarray(model.static_lmk_bary_coords),
        "dynamic_lmk_faces_idx": torch.tensor(np.asarray(model.dynamic_lmk_faces_idx, np.int64)),
        "dynamic_lmk_bary_coords": torch.tensor(np.asarray(model.dynamic_lmk_bary_coords)),
    }
    (flame_dir / "flame_static_embedding.pkl").unlink()
    (flame_dir / "flame_dynamic_embedding.npy").unlink()
    np.save(flame_dir / "landmark_embedding.npy", deca, allow_pickle=True)
    assert_same_model(io.load(flame_dir), model)


def test_smplx_reads_written_files(model, tmp_path):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    write_flame_files(model, tmp_path / "flame")
    # smplx.create(folder, model_type='flame') reads folder/flame/FLAME_NEUTRAL.pkl.
    flame = smplx.create(str(tmp_path), model_type="flame", use_face_contour=True,
                         num_expression_coeffs=100)
    with torch.no_grad():
        out = flame()
    assert tuple(out.vertices.shape) == (1, 60, 3)
    assert tuple(out.joints.shape) == (1, 5 + 51 + 17, 3)
    # At zero shape, expression and pose the mesh is the template.
    np.testing.assert_allclose(out.vertices[0].numpy(), model.v_template, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pkl: no such file"):
        io.load(tmp_path / "nope.pkl")
    with pytest.raises(FileNotFoundError, match=r"generic_model\.pkl: no such file"):
        io.read_generic_model(tmp_path / "generic_model.pkl")


def test_folder_without_embedding_names_what_was_looked_for(flame_dir):
    (flame_dir / "flame_dynamic_embedding.npy").unlink()
    with pytest.raises(FileNotFoundError) as info:
        io.load(flame_dir)
    message = str(info.value)
    assert str(flame_dir) in message and "\n" not in message
    for name in ("flame_static_embedding.pkl", "flame_dynamic_embedding.npy",
                 "landmark_embedding.npy"):
        assert name in message


def test_missing_key_is_named(model, tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(generic_dict(model, posedirs=None), protocol=2))
    with pytest.raises(ValueError, match=r"generic_model\.pkl: missing array 'posedirs' "
                                         r"\(is this a FLAME generic_model\.pkl\?\)"):
        io.read_generic_model(path)


def test_wrong_shape_is_named(model, tmp_path):
    path = tmp_path / "generic_model.pkl"
    bad = generic_dict(model, posedirs=np.zeros((60, 3, 35)))
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"generic_model\.pkl: array 'posedirs' has shape "
                                         r"\(60, 3, 35\), expected \(V, 3, 36\) with V = 60"):
        io.read_generic_model(path)


def test_truncated_pickle_is_reported(flame_dir):
    path = flame_dir / "generic_model.pkl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"generic_model\.pkl: corrupt or truncated pickle"):
        io.load(flame_dir)


def test_random_bytes_are_reported(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x00not a pickle" + np.random.default_rng(0).bytes(200))
    with pytest.raises(ValueError, match=r"generic_model\.pkl: corrupt or truncated pickle"):
        io.read_generic_model(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > marker",))


_CRAFTED = {  # pickles naming dangerous callables, written by hand (nothing imported)
    "builtins.eval": b"cbuiltins\neval\n(Vopen('marker', 'w')\ntR.",
    "subprocess.Popen": b"csubprocess\nPopen\n((Vtouch\nVmarker\nltR.",
    "torch.load": b"\x80\x02ctorch\nload\nVmarker\n\x85R.",
    "numpy.load": b"\x80\x02cnumpy\nload\nVmarker\n\x85R.",
}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": _RunsCode()}, protocol=protocol))
    with pytest.raises(formats.UnsafePickleError) as info:
        io.read_generic_model(path)
    assert str(info.value) == (f"{path}: refusing to load '{os.system.__module__}.system' from a "
                               "pickle (only numpy/scipy/chumpy/torch-tensor data is allowed)")
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", sorted(_CRAFTED))
def test_crafted_pickles_are_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(formats.UnsafePickleError, match=f"refusing to load '{name}'"):
        formats.load_pickle(_CRAFTED[name], what="crafted.pkl")
    assert not (tmp_path / "marker").exists()


def test_ndarray_over_raw_bytes_is_refused():
    # np.ndarray((1,), object, buffer=...) would take object pointers from the file.
    data = (b"\x80\x02cnumpy\nndarray\nK\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x85R"
            b"C\x08AAAAAAAA\x87R.")
    with pytest.raises(formats.UnsafePickleError, match="crafted.pkl: refusing to call "
                                                            "numpy.ndarray"):
        formats.load_pickle(data, what="crafted.pkl")


def test_sparse_matrix_with_bad_indices_is_reported(tmp_path):
    matrix = scipy.sparse.csc_matrix(np.eye(3))
    matrix.indices[0] = 100  # toarray() would write outside the dense array
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"J_regressor": matrix}, protocol=2))
    with pytest.raises(ValueError, match=r"m\.pkl: cannot rebuild the sparse matrix"):
        formats.load_pickle(path)


def test_npy_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "flame_dynamic_embedding.npy"
    np.save(path, {"lmk_face_idx": _RunsCode()}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"flame_dynamic_embedding\.npy: refusing to load"):
        io.read_dynamic_embedding(path)
    assert not (tmp_path / "marker").exists()


def test_foreign_npz_is_reported(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, kernel=np.zeros(3), bias=np.zeros(1))
    with pytest.raises(ValueError, match=r"weights\.npz: not a face3d-jax FLAME model .*"
                                         r"entries: bias, kernel"):
        io.load(path)
    np.savez(path, format=np.array("other/1"))
    with pytest.raises(ValueError, match=r"weights\.npz: format 'other/1'"):
        io.load(path)
    np.savez(path, format=np.array(io.FORMAT_TAG), v_template=np.array([None], dtype=object))
    with pytest.raises(ValueError, match=r"weights\.npz: missing array 'shapedirs'"):
        io.load(path)


def test_obj_with_quad_is_reported(tmp_path):
    path = tmp_path / "head_template.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                    "f 1/1 2/2 3/3\nf 1/1 2/2 3/3 4/4\n")
    with pytest.raises(ValueError, match=r"head_template\.obj: line 10: a face with 4 corners"):
        io.read_uv_obj(path)


def test_obj_without_texture_indices_is_reported(tmp_path):
    path = tmp_path / "head_template.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1//1 2//2 3//3\n")
    with pytest.raises(ValueError, match=r"head_template\.obj: line 5: face corner '1//1' "
                                         r"has no texture index"):
        io.read_uv_obj(path)
