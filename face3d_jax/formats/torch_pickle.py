"""Rebuilds pickled torch tensors as numpy arrays without importing torch.

DECA's landmark_embedding.npy holds pickled torch tensors. A pickled tensor is
a call of torch._utils._rebuild_tensor[_v2|_v3] on a storage, and a storage a
call of torch.storage._load_from_bytes on a stream in torch.save's legacy
format. The restricted unpickler (`unpickler.SafeUnpickler`) hands every torch.*
name to `find_class` here, which answers with our own stand-ins for these functions: they parse the
legacy stream and copy the tensor's elements into a numpy array of its dtype,
checking every size, stride and offset that comes from the file first.
"""

from __future__ import annotations

import functools
import io
import math
import struct
from typing import BinaryIO

import numpy as np

from face3d_jax.formats.unpickler import ReportedError, SafeUnpickler, run, shown, unpickle

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
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def find_class(module: str, name: str, origin: str):
    """What a pickle's torch.* `module.name` stands for here, or None if not allowed."""
    if module == "torch._utils":
        rebuild = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
                   "_rebuild_tensor_v3": _rebuild_tensor_v3,
                   "_rebuild_parameter": _rebuild_parameter}.get(name)
        return rebuild and functools.partial(rebuild, origin)
    if module == "torch.storage" and name == "_load_from_bytes":
        return functools.partial(_load_torch_storage, origin)
    if module in ("torch", "torch.cuda", "torch.storage") and name in _TORCH_STORAGES:
        return TorchDtype(name, _TORCH_STORAGES[name])
    if module == "torch" and name in _TORCH_DTYPES:
        return TorchDtype(name, _TORCH_DTYPES[name])
    return None


class _LegacyTorchUnpickler(SafeUnpickler):
    """The main pickle of a legacy torch.save stream: storages are persistent ids."""

    def __init__(self, file: BinaryIO, origin: str):
        super().__init__(file, origin, find_class)
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], TorchDtype)):
            raise ReportedError(f"{self.origin}: unexpected persistent id in a torch "
                                f"storage ({shown(pid)[:60]})")
        _, kind, key, _location, numel, view = pid
        self.storages[str(key)] = (kind.numpy(self.origin), int(numel))
        return _StorageRef(str(key), view)


class TorchDtype:
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
    if unpickle(stream, origin, find_class) != LEGACY_MAGIC:
        raise ReportedError(f"{origin}: a pickled torch storage is not in torch's legacy format")
    if unpickle(stream, origin, find_class) != LEGACY_PROTOCOL:
        raise ReportedError(f"{origin}: a pickled torch storage has an unknown protocol version")
    sys_info = unpickle(stream, origin, find_class)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    unpickler = _LegacyTorchUnpickler(stream, origin)
    root = run(unpickler, origin)
    arrays = {}
    for key in unpickle(stream, origin, find_class):
        dtype, _ = unpickler.storages.get(str(key), (None, 0))
        if dtype is None:
            raise ReportedError(f"{origin}: torch storage '{shown(key)}' is listed but not described")
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
    array = strided_copy(storage, storage_offset, size, stride, origin)
    metadata = _rest[2] if len(_rest) > 2 else None
    return _apply_metadata(array, metadata)


def _rebuild_tensor_v3(origin, storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage plus the tensor's dtype
    (what torch 2.x writes for dtypes without a legacy storage class, e.g. uint16)."""
    if not isinstance(dtype, TorchDtype) or not isinstance(storage, np.ndarray):
        raise ReportedError(f"{origin}: malformed torch tensor (_rebuild_tensor_v3)")
    np_dtype = dtype.numpy(origin).newbyteorder(storage.dtype.byteorder)
    if storage.nbytes % np_dtype.itemsize:
        raise ReportedError(f"{origin}: torch storage of {storage.nbytes} bytes is not a "
                            f"whole number of {dtype.name} elements")
    typed = storage.view(np_dtype)
    return _apply_metadata(strided_copy(typed, storage_offset, size, stride, origin), metadata)


def _rebuild_parameter(origin, data, requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
    return data


def strided_copy(storage, offset, size, stride, origin: str) -> np.ndarray:
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
