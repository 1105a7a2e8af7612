"""FLAME's asset files in and out, and our converted `flame_model.npz`.

FLAME's files come from several hands:
  generic_model.pkl, FLAME_NEUTRAL.pkl (smplx's name), flame2023.pkl: the model
    (Python 2 pickles with chumpy objects and a scipy.sparse J_regressor);
  flame_static_embedding.pkl + flame_dynamic_embedding.npy: FLAME's landmark
    embedding; landmark_embedding.npy: DECA's copy of both (torch tensors inside);
  head_template.obj (DECA) or FLAME_texture.npz: the UV layout.
`load` turns any of these, or our own npz, into a validated `FlameModel`;
`import_flame` converts them once into one npz plus a manifest;
`writer.write_flame_files` writes FLAME's own
formats back (smplx reads them). Every pickle goes through `face3d_jax.formats`: no
code from a file runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from face3d_jax import formats
from face3d_jax.flame.files import (DECA_NAME, DYNAMIC_NAME, NUM_SHAPE, ROOT_PARENT, STATIC_NAME,
                                    UV_NAMES)
from face3d_jax.flame.model import (FLAME_ARRAYS, NUM_CONTOUR_LANDMARKS, NUM_JOINTS,
                                    NUM_POSE_FEATURES, NUM_STATIC_LANDMARKS, NUM_YAW_BINS,
                                    FlameModel, validate, vertex_uv_from_faces)
from face3d_jax.formats.unpickler import shown as printable

FORMAT_TAG = "face3d-jax-flame/1"
NPZ_NAME = "flame_model.npz"
MANIFEST_NAME = "manifest.json"
MODEL_NAMES = (NPZ_NAME, "generic_model.pkl", "FLAME_NEUTRAL.pkl", "flame2023.pkl")
ARRAY_FIELDS = FLAME_ARRAYS  # our npz stores FLAME's layouts, whatever the model's storage
_MODEL_HINT = "is this a FLAME generic_model.pkl?"


# ---------------------------------------------------------------- checks


def _require_file(path: Path) -> None:
    if not path.is_file():
        what = "is a directory, expected a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{path}: {what}")


def _array(data: dict, key: str, want: tuple, dims: dict, dtype, origin: str,
           hint: str) -> np.ndarray:
    """data[key] as `dtype`, its shape checked against `want`.

    `want` holds ints and symbols ("V"); a symbol binds to the first size seen
    and must match afterwards (dims carries the bindings across arrays).
    """
    if key not in data:
        raise ValueError(f"{origin}: missing array '{key}' ({hint})")
    value = data[key]
    if isinstance(value, formats.ChumpyStub):
        raise ValueError(f"{origin}: array '{key}' is a chumpy expression ({value.qualname}) "
                         "without stored values")
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{origin}: array '{key}' cannot be read as "
                         f"{np.dtype(dtype).name} ({exc})") from None
    bound = {s: dims[s] for s in want if isinstance(s, str) and s in dims}
    ok = array.ndim == len(want) and all(
        isinstance(w, str) and (w not in dims or dims[w] == g) or w == g
        for w, g in zip(want, array.shape))
    if not ok:
        shown = "(" + ", ".join(map(str, want)) + ("," if len(want) == 1 else "") + ")"
        where = " with " + ", ".join(f"{k} = {v}" for k, v in bound.items()) if bound else ""
        raise ValueError(f"{origin}: array '{key}' has shape {array.shape}, "
                         f"expected {shown}{where}")
    dims.update({w: g for w, g in zip(want, array.shape) if isinstance(w, str)})
    return array


def _check_indices(origin: str, name: str, index: np.ndarray, bound: int, what: str) -> None:
    if index.size and (index.min() < 0 or index.max() >= bound):
        raise ValueError(f"{origin}: '{name}' holds indices in [{index.min()}, {index.max()}], "
                         f"but there are {bound} {what}")


def _load_dict(path: Path, reader, hint: str) -> dict:
    _require_file(path)
    data = reader(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of arrays, found {type(data).__name__} ({hint})")
    return data


# ---------------------------------------------------------------- readers


def read_generic_model(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads FLAME's generic_model.pkl (2020, 2023; chumpy or plain numpy).

    Returns a dict of numpy arrays (V vertices, F faces, K = 400 components in
    FLAME 2020/2023: 300 identity then 100 expression):
      v_template (V, 3) float64; f (F, 3) int64; shapedirs (V, 3, K) float64;
      posedirs (V, 3, 36) float64; J_regressor (5, V) float64 (dense);
      weights (V, 5) float64; kintree_table (2, 5) int64, the root's parent as
      stored (4294967295 or -1).
    """
    path = Path(path)
    data = _load_dict(path, formats.load_pickle, _MODEL_HINT)
    origin, dims, f64 = str(path), {}, np.float64
    spec = (("v_template", ("V", 3), f64), ("f", ("F", 3), np.int64),
            ("shapedirs", ("V", 3, "K"), f64), ("posedirs", ("V", 3, NUM_POSE_FEATURES), f64),
            ("J_regressor", (NUM_JOINTS, "V"), f64), ("weights", ("V", NUM_JOINTS), f64),
            ("kintree_table", (2, NUM_JOINTS), np.int64))
    out = {key: _array(data, key, want, dims, dtype, origin, _MODEL_HINT)
           for key, want, dtype in spec}
    _check_indices(origin, "f", out["f"], dims["V"], "vertices")
    return out


def read_static_embedding(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads FLAME's flame_static_embedding.pkl (landmarks 17..67 of iBUG 68).

    Returns: static_lmk_faces_idx (51,) int64; static_lmk_bary_coords (51, 3) float64.
    """
    path, hint = Path(path), "is this FLAME's flame_static_embedding.pkl?"
    data = _load_dict(path, formats.load_pickle, hint)
    n, dims = NUM_STATIC_LANDMARKS, {}
    return {
        "static_lmk_faces_idx": _array(data, "lmk_face_idx", (n,), dims, np.int64, str(path), hint),
        "static_lmk_bary_coords": _array(data, "lmk_b_coords", (n, 3), dims, np.float64,
                                         str(path), hint),
    }


def read_dynamic_embedding(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads FLAME's flame_dynamic_embedding.npy (the jaw contour per yaw bin).

    Returns: dynamic_lmk_faces_idx (79, 17) int64; dynamic_lmk_bary_coords
    (79, 17, 3) float64.
    """
    path, hint = Path(path), "is this FLAME's flame_dynamic_embedding.npy?"
    data = _load_dict(path, formats.load_npy, hint)
    rows, n, dims = NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, {}
    return {
        "dynamic_lmk_faces_idx": _array(data, "lmk_face_idx", (rows, n), dims, np.int64,
                                        str(path), hint),
        "dynamic_lmk_bary_coords": _array(data, "lmk_b_coords", (rows, n, 3), dims, np.float64,
                                          str(path), hint),
    }


def read_deca_landmark_embedding(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads DECA's landmark_embedding.npy (its dynamic part is pickled torch
    tensors, rebuilt here without torch).

    Returns: static_lmk_faces_idx (51,) int64, static_lmk_bary_coords (51, 3)
    float64, dynamic_lmk_faces_idx (79, 17) int64, dynamic_lmk_bary_coords
    (79, 17, 3) float64. DECA's full_lmk_* entries are not needed and not read.
    """
    path, hint = Path(path), "is this DECA's landmark_embedding.npy?"
    data = _load_dict(path, formats.load_npy, hint)
    rows, n, s, dims = NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, NUM_STATIC_LANDMARKS, {}
    spec = (("static_lmk_faces_idx", (s,), np.int64),
            ("static_lmk_bary_coords", (s, 3), np.float64),
            ("dynamic_lmk_faces_idx", (rows, n), np.int64),
            ("dynamic_lmk_bary_coords", (rows, n, 3), np.float64))
    return {key: _array(data, key, want, dims, dtype, str(path), hint)
            for key, want, dtype in spec}


def read_uv_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads the UV layout of an OBJ mesh such as DECA's head_template.obj.

    Returns: uv_coords (T, 2) float32 (v pointing up, as stored) and uv_faces
    (F, 3) int32, 0-based indices into uv_coords, one row per `f` line.
    """
    uv_coords, uv_faces, _ = _read_obj(Path(path))
    return uv_coords, uv_faces


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uv_coords (T, 2) float32, uv_faces (F, 3) int32, faces (F, 3) int32), 0-based."""
    _require_file(path)
    counts = {"v": 0, "vt": 0}
    uvs, corners = [], []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line_no, line in enumerate(file, 1):
            tokens = line.split()
            if not tokens:
                continue
            if tokens[0] in counts:
                counts[tokens[0]] += 1
                if tokens[0] == "vt":
                    uvs.append(_floats(tokens[1:3], path, line_no))
            elif tokens[0] == "f":
                corners.append(_face(tokens[1:], counts, path, line_no))
    if not uvs or not corners:
        raise ValueError(f"{path}: no {'texture coordinates (vt lines)' if not uvs else 'faces'}"
                         " found; expected a textured triangle mesh such as head_template.obj")
    faces = np.array([[c[0] for c in face] for face in corners], np.int32)
    uv_faces = np.array([[c[1] for c in face] for face in corners], np.int32)
    uv_coords = np.array(uvs, np.float32)
    _check_indices(str(path), "f (vertex index)", faces, counts["v"], "v lines")
    _check_indices(str(path), "f (vt index)", uv_faces, len(uv_coords), "vt lines")
    return uv_coords, uv_faces, faces


def _floats(tokens: list[str], path: Path, line_no: int) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(f"{path}: line {line_no}: expected 'vt u v', found '{' '.join(tokens)}'")
    return values


def _face(tokens: list[str], counts: dict, path: Path, line_no: int) -> list[tuple[int, int]]:
    """[(vertex, vt)] * 3, 0-based, of one `f a/at[/an] ...` line (negative = relative)."""
    if len(tokens) != 3:
        raise ValueError(f"{path}: line {line_no}: a face with {len(tokens)} corners; only "
                         "triangles are supported (triangulate the mesh)")
    out = []
    for token in tokens:
        parts = token.split("/")
        if len(parts) < 2 or not parts[1]:
            raise ValueError(f"{path}: line {line_no}: face corner '{token}' has no texture "
                             "index (expected v/vt or v/vt/vn)")
        try:
            v, vt = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"{path}: line {line_no}: cannot read face corner '{token}'") from None
        if v == 0 or vt == 0:
            raise ValueError(f"{path}: line {line_no}: OBJ indices start at 1, found '{token}'")
        out.append((v - 1 if v > 0 else counts["v"] + v, vt - 1 if vt > 0 else counts["vt"] + vt))
    return out


def read_flame_texture_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads the UV layout of FLAME_texture.npz (keys 'vt' and 'ft'; the texture
    space itself is not read).

    Returns: uv_coords (T, 2) float32 and uv_faces (F, 3) int32.
    """
    path, hint = Path(path), "is this FLAME_texture.npz?"
    _require_file(path)
    archive = _open_npz(path)
    with archive:
        dims = {}
        data = {key: _npz_entry(archive, key, path) for key in ("vt", "ft") if key in archive.files}
        uv_coords = _array(data, "vt", ("T", 2), dims, np.float32, str(path), hint)
        uv_faces = _array(data, "ft", ("F", 3), dims, np.int32, str(path), hint)
    _check_indices(str(path), "ft", uv_faces, len(uv_coords), "UV coordinates")
    return uv_coords, uv_faces


def _open_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})".splitlines()[0]) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an .npz archive")
    return archive


def _npz_entry(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: entry '{key}' cannot be read ({exc})".splitlines()[0]) from None


# ---------------------------------------------------------------- model assembly


@dataclasses.dataclass(frozen=True)
class _Sources:
    """The files a model is read from: model, embedding(s), UV (none for our npz)."""

    model: Path
    embedding: tuple[Path, ...] = ()
    uv: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.model, *self.embedding, *([self.uv] if self.uv else []))


def _first_existing(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _find_sources(path: Path) -> _Sources:
    """The files to read for `path`: a model file, or a folder holding one."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        folder, model = path, _first_existing(path, MODEL_NAMES)
        if model is None:
            raise FileNotFoundError(f"{folder}: no FLAME model found "
                                    f"(looked for {', '.join(MODEL_NAMES)})")
    else:
        folder, model = path.parent, path
    if model.suffix == ".npz":
        return _Sources(model)
    if model.suffix != ".pkl":
        raise ValueError(f"{model}: expected a FLAME .pkl, our {NPZ_NAME} or a folder")
    if (folder / STATIC_NAME).is_file() and (folder / DYNAMIC_NAME).is_file():
        embedding = (folder / STATIC_NAME, folder / DYNAMIC_NAME)
    elif (folder / DECA_NAME).is_file():
        embedding = (folder / DECA_NAME,)
    else:
        raise FileNotFoundError(f"{folder}: no landmark embedding beside {model.name} (looked "
                                f"for {STATIC_NAME} with {DYNAMIC_NAME}, or {DECA_NAME})")
    uv = _first_existing(folder, UV_NAMES)
    if uv is None:
        raise FileNotFoundError(f"{folder}: no UV layout beside {model.name} "
                                f"(looked for {' or '.join(UV_NAMES)})")
    return _Sources(model, embedding, uv)


def load(path_or_dir: str | os.PathLike) -> FlameModel:
    """Loads a FLAME model: our .npz, a FLAME .pkl (embeddings and UV layout are
    looked for beside it), or a folder holding a model (the first of
    MODEL_NAMES found: our npz, generic_model.pkl, FLAME_NEUTRAL.pkl,
    flame2023.pkl), embeddings (FLAME's pair, else DECA's landmark_embedding.npy)
    and UV layout (head_template.obj, else FLAME_texture.npz).

    Returns a validated `FlameModel` (numpy arrays; shapes in its docstring):
    the first 300 of FLAME's shapedirs components are identity, the rest
    (100) expression.
    """
    path = Path(path_or_dir)
    return _load_sources(_find_sources(path), str(path))


def _load_sources(sources: _Sources, origin: str) -> FlameModel:
    if sources.model.suffix == ".npz":
        return _load_npz(sources.model)
    generic = read_generic_model(sources.model)
    if len(sources.embedding) == 1:
        embedding = read_deca_landmark_embedding(sources.embedding[0])
    else:
        embedding = {**read_static_embedding(sources.embedding[0]),
                     **read_dynamic_embedding(sources.embedding[1])}
    uv_coords, uv_faces = _read_uv_for(sources.uv, generic["f"])
    source = "FLAME " + " + ".join(p.name for p in sources.files)
    return _build_model(generic, embedding, uv_coords, uv_faces, source, origin)


def _read_uv_for(path: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uv_coords (T, 2), uv_faces (F, 3)) of a UV file, in the order of `faces`."""
    if path.suffix == ".npz":
        uv_coords, uv_faces = read_flame_texture_npz(path)
        obj_faces = None
    else:
        uv_coords, uv_faces, obj_faces = _read_obj(path)
    if len(uv_faces) != len(faces):
        raise ValueError(f"{path}: {len(uv_faces)} UV triangles, but the model has "
                         f"{len(faces)} faces")
    if obj_faces is not None and not np.array_equal(obj_faces, faces):
        uv_faces = _reorder_uv_faces(obj_faces, uv_faces, faces, path)
    return uv_coords, uv_faces


def _reorder_uv_faces(obj_faces, uv_faces, faces, path: Path) -> np.ndarray:
    """uv_faces (F, 3) for the model's face order, when the OBJ lists the same
    triangles in another order or with rotated corners."""
    def canonical(tris):  # rotate each triangle so its smallest vertex comes first
        shift = np.argmin(tris, axis=1)[:, None]
        return np.take_along_axis(tris, (np.arange(3) + shift) % 3, axis=1), shift[:, 0]

    obj_keys, obj_shift = canonical(np.asarray(obj_faces))
    keys, shift = canonical(np.asarray(faces))
    where = {tuple(k): i for i, k in enumerate(obj_keys.tolist())}
    out = np.empty_like(uv_faces)
    for j, key in enumerate(keys.tolist()):
        i = where.get(tuple(key))
        if i is None:
            raise ValueError(f"{path}: its triangles are not the model's faces (face {j} "
                             f"{faces[j].tolist()} is missing)")
        # model corner c is canonical corner (c - shift[j]), i.e. OBJ corner (c - shift[j] + obj_shift[i])
        out[j] = uv_faces[i][(np.arange(3) - shift[j] + obj_shift[i]) % 3]
    return out


def _parents(kintree_table: np.ndarray, origin: str) -> tuple[int, ...]:
    """FLAME's kintree_table[0] with the root's parent (uint32 max or -1) as -1."""
    if not np.array_equal(kintree_table[1], np.arange(NUM_JOINTS)):
        raise ValueError(f"{origin}: kintree_table row 1 is {kintree_table[1].tolist()}, "
                         f"expected {list(range(NUM_JOINTS))}")
    return tuple(-1 if p in (ROOT_PARENT, -1) else int(p) for p in kintree_table[0])


def _build_model(generic: dict, embedding: dict, uv_coords, uv_faces, source: str,
                 origin: str) -> FlameModel:
    dirs = generic["shapedirs"]
    num_v = generic["v_template"].shape[0]
    return FlameModel.from_flame(
        origin=origin,
        v_template=generic["v_template"],
        shapedirs=dirs[:, :, :NUM_SHAPE],
        exprdirs=dirs[:, :, NUM_SHAPE:],  # (V, 3, 0) for a model without expressions
        posedirs=generic["posedirs"],
        J_regressor=generic["J_regressor"],
        weights=generic["weights"],
        faces=generic["f"],
        uv_coords=uv_coords,
        uv_faces=uv_faces,
        vertex_uv=vertex_uv_from_faces(num_v, generic["f"], uv_faces, uv_coords),
        parents=_parents(generic["kintree_table"], origin),
        source=source,
        **embedding,
    )


# ---------------------------------------------------------------- our npz


def save_npz(model: FlameModel, path: str | os.PathLike, manifest: dict | None = None) -> Path:
    """Writes our converted model: every FlameModel array by name (canonical
    float32/int32 dtypes), 'parents' (5,) int32, 'source' and 'format' strings.

    With `manifest`, also writes it as manifest.json beside the npz. Returns the npz path.
    """
    path = Path(path)
    model = validate(model, origin=f"model to save as {path.name}")
    arrays = {name: np.asarray(getattr(model, name)) for name in ARRAY_FIELDS}
    arrays.update(format=np.array(FORMAT_TAG), source=np.array(model.source),
                  parents=np.array(model.parents, np.int32))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:  # a file object: np.savez would append ".npz" to a name
        np.savez(file, **arrays)
    os.replace(tmp, path)  # never leave a half-written model under the real name
    if manifest is not None:
        (path.parent / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _load_npz(path: Path) -> FlameModel:
    archive = _open_npz(path)
    with archive:
        keys = set(archive.files)
        if "format" not in keys:
            shown = ", ".join(sorted(keys)[:6]) + (", ..." if len(keys) > 6 else "")
            raise ValueError(f"{path}: not a face3d-jax FLAME model (no '{FORMAT_TAG}' format "
                             f"tag; entries: {shown}); convert FLAME's files with "
                             "`face3d assets import-flame`")
        tag = str(_npz_entry(archive, "format", path))
        if tag != FORMAT_TAG:
            raise ValueError(f"{path}: format '{printable(tag)}', this version reads "
                             f"'{FORMAT_TAG}'")
        for name in (*ARRAY_FIELDS, "parents"):
            if name not in keys:
                raise ValueError(f"{path}: missing array '{name}' (a damaged {NPZ_NAME}?)")
        arrays = {name: _npz_entry(archive, name, path) for name in ARRAY_FIELDS}
        parents = tuple(int(p) for p in _npz_entry(archive, "parents", path).reshape(-1))
        source = str(_npz_entry(archive, "source", path)) if "source" in keys else path.name
    return FlameModel.from_flame(**arrays, parents=parents, source=source, origin=str(path))


def import_flame(src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Converts FLAME's files (a .pkl with its neighbours, or a folder) into
    out_dir/flame_model.npz plus out_dir/manifest.json (source names, sizes and
    sha256, counts, format tag, face3d-jax version). Returns the npz path."""
    src = Path(src)
    sources = _find_sources(src)
    model = _load_sources(sources, str(src))
    return save_npz(model, Path(out_dir) / NPZ_NAME, manifest=_manifest(model, sources))


def _manifest(model: FlameModel, sources: _Sources) -> dict:
    from face3d_jax import __version__

    return {
        "format": FORMAT_TAG,
        "created_by": f"face3d-jax {__version__}",
        "sources": [{"file": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)}
                    for p in sources.files],
        "counts": {
            "vertices": model.num_vertices,
            "faces": int(model.faces.shape[0]),
            "shape_components": model.num_shape,
            "expression_components": model.num_expression,
            "uv_coords": int(model.uv_coords.shape[0]),
        },
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
