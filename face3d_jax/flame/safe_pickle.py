"""Restricted unpickling of asset files: data comes in, code never runs.

FLAME's generic_model.pkl (a Python 2 pickle of chumpy objects and a
scipy.sparse matrix), its landmark embeddings (.pkl and object-dtype .npy) and
DECA's landmark_embedding.npy (which holds pickled torch tensors) are pickles.
A pickle may name any importable callable and call it, so `pickle.load` on a
downloaded file is arbitrary code execution. Here `find_class` admits only the
names needed to rebuild numpy arrays; foreign classes (chumpy, scipy.sparse)
become inert stand-ins that record their state, and torch tensors are rebuilt
by our own parser of torch's legacy format, so neither chumpy nor torch need to
be installed. After loading, stand-ins are turned into numpy arrays by code of
ours (`_convert`).

    data = load_pickle("generic_model.pkl")        # dict of numpy arrays
    emb = load_npy("landmark_embedding.npy")       # dict (a 0-d object array's item)
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import re
import struct
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

# torch storage classes and dtypes -> numpy dtype codes ("bfloat16" via ml_dtypes).
_TORCH_STORAGES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float64": "f8", "double": "f8", "float32": "f4", "float": "f4", "float16": "f2",
    "half": "f2", "bfloat16": "bfloat16", "int64": "i8", "long": "i8", "int32": "i4",
    "int": "i4", "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1",
    "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?",
    "complex64": "c8", "cfloat": "c8", "complex128": "c16", "cdouble": "c16",
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
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
            return self._torch_name(module, name)
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

    def _torch_name(self, module: str, name: str):
        origin = self.origin
        if module == "torch._utils":
            rebuild = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
                       "_rebuild_tensor_v3": _rebuild_tensor_v3,
                       "_rebuild_parameter": _rebuild_parameter}.get(name)
            return rebuild and functools.partial(rebuild, origin)
        if module == "torch.storage" and name == "_load_from_bytes":
            return functools.partial(_load_torch_storage, origin)
        if module in ("torch", "torch.cuda", "torch.storage") and name in _TORCH_STORAGES:
            return _TorchDtype(name, _TORCH_STORAGES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name, _TORCH_DTYPES[name])
        return None


class _LegacyTorchUnpickler(_SafeUnpickler):
    """The main pickle of a legacy torch.save stream: storages are persistent ids."""

    def __init__(self, file: BinaryIO, origin: str):
        super().__init__(file, origin)
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _TorchDtype)):
            raise ReportedError(f"{self.origin}: unexpected persistent id in a torch "
                                f"storage ({_shown(pid)[:60]})")
        _, kind, key, _location, numel, view = pid
        self.storages[str(key)] = (kind.numpy(self.origin), int(numel))
        return _StorageRef(str(key), view)


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


# ---------------------------------------------------------------- torch tensors


class _TorchDtype:
    """A torch storage class or dtype named by a pickle, as a numpy dtype code."""

    def __init__(self, name: str, code: str):
        self.name, self.code = name, code

    def numpy(self, origin: str) -> np.dtype:
        # Re-checked here: a pickle's BUILD opcode can overwrite these attributes.
        if self.code not in _TORCH_DTYPES.values():
            raise ReportedError(f"{origin}: malformed torch dtype in a pickle")
        if self.code != "bfloat16":
            return np.dtype(self.code)
        try:
            import ml_dtypes  # installed with jax
        except ImportError:
            raise ReportedError(f"{origin}: a bfloat16 torch tensor needs the ml_dtypes "
                                "package") from None
        return np.dtype(ml_dtypes.bfloat16)


class _StorageRef:
    """A storage named in a legacy torch stream, before its bytes are read."""

    def __init__(self, key: str, view):
        self.key, self.view = key, view


def _load_torch_storage(origin: str, data) -> np.ndarray:
    """torch.storage._load_from_bytes without torch: a legacy torch.save stream -> (N,) array.

    The stream holds: pickles of the magic number, the protocol version and
    sys_info; the main pickle (the storage, as a persistent id); a pickle of
    the storage keys; then per key an int64 element count and the raw data.
    """
    if isinstance(data, str):  # Python 2 pickles carry bytes as latin-1 text
        data = data.encode("latin1")
    if not isinstance(data, bytes):
        raise ReportedError(f"{origin}: a torch storage holds {type(data).__name__}, "
                            "expected bytes")
    stream = io.BytesIO(data)
    if _unpickle(stream, origin) != _TORCH_LEGACY_MAGIC:
        raise ReportedError(f"{origin}: a pickled torch storage is not in torch's legacy format")
    if _unpickle(stream, origin) != _TORCH_LEGACY_PROTOCOL:
        raise ReportedError(f"{origin}: a pickled torch storage has an unknown protocol version")
    sys_info = _unpickle(stream, origin)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    unpickler = _LegacyTorchUnpickler(stream, origin)
    root = _run(unpickler, origin)
    arrays = {}
    for key in _unpickle(stream, origin):
        dtype, _ = unpickler.storages.get(str(key), (None, 0))
        if dtype is None:
            raise ReportedError(f"{origin}: torch storage '{_shown(key)}' is listed but not described")
        arrays[str(key)] = _read_storage_data(stream, dtype.newbyteorder("<" if little else ">"),
                                              origin)
    return _resolve_storage(root, arrays, origin)


def _read_storage_data(stream: BinaryIO, dtype: np.dtype, origin: str) -> np.ndarray:
    """(count,) read-only array: an int64 element count, then count * itemsize bytes."""
    header = stream.read(8)
    if len(header) != 8:
        raise ValueError(f"{origin}: truncated torch storage")
    (count,) = struct.unpack("<q", header)
    raw = stream.read(count * dtype.itemsize) if count >= 0 else b""
    if count < 0 or len(raw) != count * dtype.itemsize:
        raise ValueError(f"{origin}: truncated torch storage ({count} elements announced)")
    return np.frombuffer(raw, dtype=dtype)


def _resolve_storage(root, arrays: dict[str, np.ndarray], origin: str) -> np.ndarray:
    if not isinstance(root, _StorageRef) or root.key not in arrays:
        raise ReportedError(f"{origin}: a pickled torch storage holds no storage data")
    array = arrays[root.key]
    if root.view is not None:  # (view_key, offset, size) in elements
        _, offset, size = root.view
        offset, size = int(offset), int(size)
        if offset < 0 or size < 0 or offset + size > array.size:
            raise ReportedError(f"{origin}: torch storage view outside its storage")
        array = array[offset:offset + size]
    return array


def _rebuild_tensor(origin, storage, storage_offset, size, stride, *_rest) -> np.ndarray:
    """torch._utils._rebuild_tensor[_v2](storage, offset, size, stride[, requires_grad,
    backward_hooks[, metadata]]) -> np.ndarray of the storage's dtype."""
    array = _strided_copy(storage, storage_offset, size, stride, origin)
    metadata = _rest[2] if len(_rest) > 2 else None
    return _apply_metadata(array, metadata)


def _rebuild_tensor_v3(origin, storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage plus the tensor's dtype
    (what torch 2.x writes for dtypes without a legacy storage class, e.g. uint16)."""
    if not isinstance(dtype, _TorchDtype) or not isinstance(storage, np.ndarray):
        raise ReportedError(f"{origin}: malformed torch tensor (_rebuild_tensor_v3)")
    np_dtype = dtype.numpy(origin).newbyteorder(storage.dtype.byteorder)
    if storage.nbytes % np_dtype.itemsize:
        raise ReportedError(f"{origin}: torch storage of {storage.nbytes} bytes is not a "
                            f"whole number of {dtype.name} elements")
    typed = storage.view(np_dtype)
    return _apply_metadata(_strided_copy(typed, storage_offset, size, stride, origin), metadata)


def _rebuild_parameter(origin, data, requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
    return data


def _strided_copy(storage, offset, size, stride, origin: str) -> np.ndarray:
    """A tensor's elements as a C-ordered native-endian copy, bounds-checked first
    (as_strided reads memory without checks, and these numbers come from a file)."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise ReportedError(f"{origin}: malformed torch tensor (its storage is "
                            f"{type(storage).__name__})")
    try:
        offset, size, stride = int(offset), tuple(map(int, size)), tuple(map(int, stride))
    except (TypeError, ValueError):
        raise ReportedError(f"{origin}: malformed torch tensor (size/stride)") from None
    native = storage.dtype.newbyteorder("=")
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise ReportedError(f"{origin}: malformed torch tensor (size {size}, stride {stride}, "
                            f"offset {offset})")
    if math.prod(size) == 0:
        return np.zeros(size, dtype=native)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ReportedError(f"{origin}: torch tensor (size {size}, stride {stride}, offset "
                            f"{offset}) reaches outside its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride),
        writeable=False)
    return np.array(view, dtype=native, order="C")


def _apply_metadata(array: np.ndarray, metadata) -> np.ndarray:
    """torch's lazy conj/neg bits, applied."""
    if isinstance(metadata, dict):
        if metadata.get("neg"):
            array = -array
        if metadata.get("conj"):
            array = np.conj(array)
    return array
