"""Asset pickles (FLAME's generic_model.pkl, its landmark embeddings, DECA's
landmark_embedding.npy) read through the restricted unpickler, and their
stand-ins turned into numpy arrays by code of ours (`_convert`): chumpy
objects become their stored array, scipy.sparse matrices dense arrays, torch
tensors numpy arrays (`torch_pickle`), so neither chumpy nor torch need to be
installed and no code from the file runs.

    data = load_pickle("generic_model.pkl")        # dict of numpy arrays
    emb = load_npy("landmark_embedding.npy")       # dict (a 0-d object array's item)
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np

from face3d_jax.formats import torch_pickle
from face3d_jax.formats.unpickler import ChumpyStub, SparseStub, open_binary, shown, unpickle

# A sparse matrix is made dense; refuse sizes no FLAME file has (2 GiB of float64).
_MAX_DENSE_ELEMENTS = 1 << 28


def _unpickle(file, origin: str):
    return unpickle(file, origin, torch_pickle.find_class)


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
    with open_binary(path_or_bytes, origin) as file:
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
    with open_binary(path, origin) as file:
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
                         f"{shown(stub.qualname)} ({type(exc).__name__}: {exc})") from None
