"""Restricted unpickling of asset files: data comes in, code never runs.

FLAME's generic_model.pkl (a Python 2 pickle of chumpy objects and a
scipy.sparse matrix), its landmark embeddings (.pkl and object-dtype .npy) and
DECA's landmark_embedding.npy (which holds pickled torch tensors) are pickles.
A pickle may name any importable callable and call it, so `pickle.load` on a
downloaded file is arbitrary code execution. Here `find_class` admits only the
names needed to rebuild numpy arrays; foreign classes (chumpy, scipy.sparse)
become inert stand-ins that record their state, and torch tensors are rebuilt
by our own parser of torch's legacy format (`torch_pickle`), so neither chumpy
nor torch need to be installed. After loading, stand-ins are turned into numpy
arrays by code of ours (`_convert`).

    data = load_pickle("generic_model.pkl")        # dict of numpy arrays
    emb = load_npy("landmark_embedding.npy")       # dict (a 0-d object array's item)
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

ALLOWED = "only numpy/scipy/chumpy/torch-tensor data is allowed"

# Module names of Python 2 pickles. The default find_class maps them
# (fix_imports); ours replaces it, so it maps the few that we admit itself.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# numpy's own reconstruction functions, found through numpy's reducers so that
# numpy 1.x (numpy.core) and 2.x (numpy._core) resolve to the installed ones.
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
# numpy.ndarray itself is not among them: np.ndarray(shape, object, buffer=...)
# would read object pointers from the file. Pickles name it only as the first
# argument of _reconstruct, which gets a token instead (_SafeUnpickler).
_NUMPY_NAMES = {("numpy", "dtype"): np.dtype}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_NAMES[(_mod, "scalar")] = _NP_SCALAR  # refuses object dtypes from bytes
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_NAMES[(_mod, "_frombuffer")] = _NP_FROMBUFFER  # refuses object dtypes
_RECONSTRUCT_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
# Containers that pickles of chumpy state and torch tensors use.
_BUILTIN_NAMES = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_SPARSE_CLASS = re.compile(r"[a-z]{3}_(matrix|array)")

# A sparse matrix is made dense; refuse sizes no FLAME file has (2 GiB of float64).
_MAX_DENSE_ELEMENTS = 1 << 28


class ReportedError(ValueError):
    """A ValueError whose one-line message already names the file."""


class UnsafePickleError(ReportedError):
    """A pickle names a callable or class outside the allow-list."""


# ---------------------------------------------------------------- stand-ins


class _Stub:
    """Inert stand-in for a foreign class: records its pickled state, runs nothing."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        # Objects with __slots__ pickle their state as (dict, slot_dict).
        if isinstance(state, tuple) and len(state) == 2:
            merged = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        self.state = state

    def __repr__(self):
        return f"<{self.qualname} stand-in>"


class ChumpyStub(_Stub):
    """A chumpy object; `Ch` pickles its __dict__, whose 'x' holds the array."""


class SparseStub(_Stub):
    """A scipy.sparse matrix; its state holds data/indices/indptr/_shape."""


# ---------------------------------------------------------------- unpickler


def _shown(text: Any) -> str:
    """A name from a file, safe to print on one line."""
    return repr(str(text))[1:-1][:120]


class _SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose find_class admits only data-rebuilding names."""

    def __init__(self, file: BinaryIO, origin: str):
        super().__init__(file, encoding="latin1")
        self.origin = origin
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        found = self._lookup(_PY2_MODULES.get(module, module), name)
        if found is None:
            raise UnsafePickleError(f"{self.origin}: refusing to load '{_shown(module)}."
                                    f"{_shown(name)}' from a pickle ({ALLOWED})")
        return found

    def _lookup(self, module: str, name: str):
        key = (module, name)
        if key in _NUMPY_NAMES:
            return _NUMPY_NAMES[key]
        if key == ("numpy", "ndarray"):
            return self._ndarray_token
        if module in _RECONSTRUCT_MODULES and name == "_reconstruct":
            return self._reconstruct_array
        if key in _BUILTIN_NAMES:
            return _BUILTIN_NAMES[key]
        if key == ("copyreg", "_reconstructor"):
            return self._reconstructor
        if key == ("_codecs", "encode"):
            # Python 3 writes bytes at protocol <= 2 as _codecs.encode(text, 'latin1').
            return self._latin1_encode
        if module == "chumpy" or module.startswith("chumpy."):
            return self._stub(ChumpyStub, module, name)
        if module.startswith("scipy.sparse") and _SPARSE_CLASS.fullmatch(name):
            return self._stub(SparseStub, module, name)
        if module == "torch" or module.startswith("torch."):
            # torch_pickle builds on this module, so it is imported here, not at the top.
            from face3d_jax.flame import torch_pickle

            return torch_pickle.find_class(module, name, self.origin)
        return None

    def _stub(self, base: type, module: str, name: str) -> type:
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = type(base.__name__, (base,), {"qualname": f"{module}.{name}"})
        return self._stubs[key]

    def _ndarray_token(self, *args, **kwargs):
        """numpy.ndarray called by a pickle (only _reconstruct may receive it)."""
        raise UnsafePickleError(f"{self.origin}: refusing to call numpy.ndarray from a pickle "
                                f"({ALLOWED})")

    def _reconstruct_array(self, subtype, shape, dtype):
        """numpy's _reconstruct(ndarray, shape, dtype): an empty array that BUILD then
        fills through ndarray.__setstate__ (which checks sizes and unpickles objects)."""
        if subtype != self._ndarray_token:
            raise UnsafePickleError(f"{self.origin}: refusing to rebuild an array of class "
                                    f"{_shown(getattr(subtype, '__name__', subtype))} ({ALLOWED})")
        return _NP_RECONSTRUCT(np.ndarray, shape, dtype)

    def _reconstructor(self, cls, base, state):
        """copyreg._reconstructor (protocol 0/1 objects), for our stand-ins only."""
        if not (isinstance(cls, type) and issubclass(cls, _Stub)) or base is not object:
            raise UnsafePickleError(f"{self.origin}: refusing copyreg._reconstructor of "
                                    f"{_shown(getattr(cls, '__name__', cls))} ({ALLOWED})")
        return cls.__new__(cls)

    def _latin1_encode(self, text, encoding="utf-8"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"{self.origin}: refusing _codecs.encode with encoding "
                                    f"'{_shown(encoding)}' ({ALLOWED})")
        return text.encode("latin1")

def _unpickle(file: BinaryIO, origin: str):
    """Unpickles one object with the restricted unpickler."""
    return _run(_SafeUnpickler(file, origin), origin)


def _run(unpickler: _SafeUnpickler, origin: str):
    """unpickler.load(), every failure mapped to a one-line ValueError naming `origin`."""
    try:
        return unpickler.load()
    except ReportedError:
        raise
    except RecursionError:
        raise ValueError(f"{origin}: corrupt pickle (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001  (whatever a damaged stream makes numpy/pickle raise)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        raise ValueError(f"{origin}: corrupt or truncated pickle ({reason})") from None


# ---------------------------------------------------------------- public API


def load_pickle(path_or_bytes: str | os.PathLike | bytes, what: str | None = None) -> Any:
    """Unpickles a file (or bytes) with the restricted unpickler.

    Args:
      path_or_bytes: a path, or the pickle's bytes.
      what: the name used in error messages (default: the path).
    Returns:
      The unpickled object; chumpy objects become np.ndarray (their 'x'),
      scipy.sparse matrices dense np.ndarray, torch tensors np.ndarray of the
      tensor's dtype (a chumpy expression without stored values stays a
      `ChumpyStub`).
    Raises:
      FileNotFoundError if the file is missing; UnsafePickleError for a name
      outside the allow-list; ValueError for a corrupt or truncated pickle.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        origin = what or "pickle data"
        return _convert(_unpickle(io.BytesIO(bytes(path_or_bytes)), origin), origin)
    origin = what or os.fspath(path_or_bytes)
    with _open(path_or_bytes, origin) as file:
        return _convert(_unpickle(file, origin), origin)


def load_npy(path: str | os.PathLike, what: str | None = None) -> Any:
    """Reads a .npy file; object arrays (pickled dicts) go through `load_pickle`'s rules.

    Args:
      path: the .npy file.
      what: the name used in error messages (default: the path).
    Returns:
      A numeric np.ndarray as stored; for an object array, the array with its
      elements converted as in `load_pickle`, or its single item when it is
      0-d (as `np.load(path, allow_pickle=True)[()]`; e.g. a dict).
    """
    origin = what or os.fspath(path)
    with _open(path, origin) as file:
        try:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise ValueError(f"format version {version} is not 1.0 or 2.0")
        except ValueError as exc:
            raise ValueError(f"{origin}: not a valid .npy file ({exc})") from None
        if not dtype.hasobject:
            file.seek(0)
            try:
                return np.load(file, allow_pickle=False)
            except (ValueError, EOFError, OSError) as exc:
                raise ValueError(f"{origin}: corrupt or truncated .npy file ({exc})") from None
        array = _convert(_unpickle(file, origin), origin)
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise ValueError(f"{origin}: the pickled payload is not the object array of shape "
                         f"{tuple(shape)} that the .npy header announces")
    return array[()] if array.ndim == 0 else array


def _open(path: str | os.PathLike, origin: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{origin}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- conversion


def _convert(obj: Any, origin: str) -> Any:
    """Replaces stand-ins by numpy arrays, recursively through containers."""
    try:
        return _convert_rec(obj, origin)
    except RecursionError:
        raise ValueError(f"{origin}: pickle nests too deeply or refers to itself") from None


def _convert_rec(obj: Any, origin: str) -> Any:
    if isinstance(obj, ChumpyStub):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "x" not in state:
            return obj  # a chumpy expression; the reader that needs it says so
        return np.asarray(_convert_rec(state["x"], origin))
    if isinstance(obj, SparseStub):
        return _sparse_to_dense(obj, origin)
    if isinstance(obj, dict):
        return {key: _convert_rec(value, origin) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert_rec(value, origin) for value in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.dtype.fields is None:
        out = np.empty(obj.shape, dtype=object)
        for index, value in np.ndenumerate(obj):
            out[index] = _convert_rec(value, origin)
        return out
    return obj


def _sparse_to_dense(stub: SparseStub, origin: str) -> np.ndarray:
    """(M, N) dense array from a scipy.sparse state, rebuilt by scipy's constructors."""
    import scipy.sparse  # the constructors validate the arrays; no pickled code runs

    state = stub.state if isinstance(stub.state, dict) else {}
    kind = stub.qualname.rsplit(".", 1)[-1][:3]
    try:
        shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
        if len(shape) != 2 or math.prod(shape) > _MAX_DENSE_ELEMENTS:
            raise ValueError(f"shape {shape} is not a 2-D matrix of a plausible size")
        if kind in ("csc", "csr"):
            cls = scipy.sparse.csc_matrix if kind == "csc" else scipy.sparse.csr_matrix
            matrix = cls((state["data"], state["indices"], state["indptr"]), shape=shape)
            # The constructor checks only the cheap invariants; toarray() trusts the
            # indices, which come from the file, so check them all first.
            matrix.check_format(full_check=True)
        elif kind == "coo":
            row, col = state["coords"] if "coords" in state else (state["row"], state["col"])
            matrix = scipy.sparse.coo_matrix((state["data"], (row, col)), shape=shape)
        else:
            raise ValueError(f"sparse format '{kind}' is not supported (csc, csr, coo are)")
        return np.asarray(matrix.toarray())
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{origin}: cannot rebuild the sparse matrix "
                         f"{_shown(stub.qualname)} ({type(exc).__name__}: {exc})") from None
