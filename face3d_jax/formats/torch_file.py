"""Reads torch.save files (.pt/.pth) as numpy arrays without torch and without running code.

Two formats exist: the zip archive of torch >= 1.6 (`<name>/data.pkl`, one
member `<name>/data/<key>` of raw bytes per storage, `<name>/byteorder`) and
the legacy stream of older torch (pickles of a magic number, the protocol and
sys_info, the main pickle, the storage keys, then each storage as an int64
element count and its bytes); rosinality's 2020 checkpoints may be either.
The main pickle goes through the project's restricted unpickler
(`face3d_jax.formats.unpickler`): tensors become `DeferredTensor`s (storage
key, dtype, offset, size, stride) and only the tensors a caller asks for are
read (`materialize`), so the optimizer states of a training checkpoint are
never loaded. `argparse.Namespace` (rosinality stores its training arguments)
becomes an inert stand-in holding its attributes as a dict.

    root = load_torch_file("550000.pt")           # dicts/lists of DeferredTensor
    arrays = materialize(root["g_ema"])           # {key: np.ndarray}
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from face3d_jax.formats import torch_pickle
from face3d_jax.formats.unpickler import ReportedError, SafeUnpickler, Stub, run, shown, unpickle


class NamespaceStub(Stub):
    """An argparse.Namespace from a pickle; `state` is its attribute dict."""

    qualname = "argparse.Namespace"


class DeferredTensor:
    """A tensor named by a torch file, read on `materialize`."""

    def __init__(self, source: "_Storages", key: str, offset: int, size, stride):
        self.source, self.key = source, key
        self.offset, self.size, self.stride = offset, size, stride

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.size)

    def numpy(self) -> np.ndarray:
        storage = self.source.array(self.key)
        return torch_pickle.strided_copy(storage, self.offset, self.size, self.stride,
                                          self.source.origin)


class _Storages:
    """Where each storage's bytes lie: a zip member or a span of the legacy stream."""

    def __init__(self, origin: str):
        self.origin = origin
        self.dtypes: dict[str, np.dtype] = {}
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        self.legacy: dict[str, tuple[int, int]] = {}  # key -> (byte offset, count)
        self.stream: BinaryIO | None = None
        self.cache: dict[str, np.ndarray] = {}

    def array(self, key: str) -> np.ndarray:
        if key in self.cache:
            return self.cache[key]
        dtype = self.dtypes.get(key)
        if dtype is None:
            raise ReportedError(f"{self.origin}: tensor refers to unknown storage "
                                f"'{shown(key)}'")
        if self.zip is not None:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.zip.read(name)
            except KeyError:
                raise ReportedError(f"{self.origin}: storage '{shown(name)}' is missing from "
                                    "the archive (truncated file?)") from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ReportedError(f"{self.origin}: cannot read storage '{shown(name)}' "
                                    f"({exc})") from None
        else:
            if key not in self.legacy:
                raise ReportedError(f"{self.origin}: storage '{shown(key)}' has no data "
                                    "(truncated file?)")
            offset, count = self.legacy[key]
            self.stream.seek(offset)
            raw = self.stream.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ReportedError(f"{self.origin}: truncated torch storage '{shown(key)}'")
        if len(raw) % dtype.itemsize:
            raise ReportedError(f"{self.origin}: storage '{shown(key)}' of {len(raw)} bytes "
                                f"is not a whole number of {dtype} elements")
        self.cache[key] = np.frombuffer(raw, dtype=dtype)
        return self.cache[key]


class _TorchFileUnpickler(SafeUnpickler):
    """The main pickle of a torch file: storages are persistent ids, tensors deferred."""

    def __init__(self, file: BinaryIO, storages: _Storages, byteorder: str):
        super().__init__(file, storages.origin, torch_pickle.find_class)
        self.storages, self.byteorder = storages, byteorder

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *args: data
        if (module, name) == ("argparse", "Namespace"):
            return NamespaceStub
        return super().find_class(module, name)

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy adds view metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], torch_pickle.TorchDtype)):
            raise ReportedError(f"{self.origin}: unexpected persistent id "
                                f"({shown(pid)[:60]}) in a torch file")
        if len(pid) == 6 and pid[5] is not None:
            raise ReportedError(f"{self.origin}: storage views of legacy torch files are "
                                "not supported")
        key = str(pid[2])
        dtype = pid[1].numpy(self.origin).newbyteorder(self.byteorder)
        self.storages.dtypes[key] = dtype
        return key

    def _rebuild_tensor(self, storage, offset, size, stride, *_rest):
        if not isinstance(storage, str):
            raise ReportedError(f"{self.origin}: malformed torch tensor")
        return DeferredTensor(self.storages, storage, offset, size, stride)


def load_torch_file(path: str | os.PathLike) -> Any:
    """Unpickles a torch.save file with tensors as `DeferredTensor`s.

    Args:
      path: a .pt/.pth file (zip or legacy format).
    Returns:
      The saved object (dicts, lists, numbers, strings, DeferredTensor,
      NamespaceStub). The file stays open while its tensors are referenced.
    Raises:
      FileNotFoundError if missing; ValueError (one line, naming the file) if
      it is not a torch file, is truncated, or names a class outside the
      allow-list.
    """
    origin = os.fspath(path)
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{origin}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read ({exc.strerror or exc})") from None
    storages = _Storages(origin)
    if zipfile.is_zipfile(file):
        file.seek(0)
        return _load_zip(file, storages)
    file.seek(0)
    return _load_legacy(file, storages)


def _load_zip(file: BinaryIO, storages: _Storages) -> Any:
    origin = storages.origin
    try:
        archive = zipfile.ZipFile(file)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{origin}: corrupt zip archive ({exc})") from None
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pickles) != 1:
        raise ValueError(f"{origin}: not a torch.save archive (no single data.pkl)")
    storages.zip, storages.prefix = archive, pickles[0][:-len("data.pkl")]
    byteorder = "<"
    if f"{storages.prefix}byteorder" in names:
        byteorder = ">" if archive.read(f"{storages.prefix}byteorder").strip() == b"big" else "<"
    try:
        data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{origin}: cannot read data.pkl ({exc})") from None
    return run(_TorchFileUnpickler(io.BytesIO(data), storages, byteorder), origin)


def _load_legacy(file: BinaryIO, storages: _Storages) -> Any:
    origin = storages.origin
    try:
        magic = unpickle(file, origin, torch_pickle.find_class)
    except ValueError:
        raise ValueError(f"{origin}: not a torch file (neither a zip archive nor a legacy "
                         "torch.save stream)") from None
    if magic != torch_pickle.LEGACY_MAGIC:
        raise ValueError(f"{origin}: not a torch file (no torch.save magic number)")
    if unpickle(file, origin, torch_pickle.find_class) != torch_pickle.LEGACY_PROTOCOL:
        raise ValueError(f"{origin}: unknown torch.save protocol version")
    sys_info = unpickle(file, origin, torch_pickle.find_class)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    root = run(_TorchFileUnpickler(file, storages, "<" if little else ">"), origin)
    keys = unpickle(file, origin, torch_pickle.find_class)
    if not isinstance(keys, list):
        raise ValueError(f"{origin}: malformed storage key list")
    for key in keys:
        key = str(key)
        dtype = storages.dtypes.get(key)
        header = file.read(8)
        if dtype is None or len(header) != 8:
            raise ValueError(f"{origin}: truncated or malformed storage '{shown(key)}'")
        (count,) = struct.unpack("<q" if little else ">q", header)
        storages.legacy[key] = (file.tell(), count)
        file.seek(count * dtype.itemsize, os.SEEK_CUR)
    if file.tell() > os.fstat(file.fileno()).st_size:
        raise ValueError(f"{origin}: truncated torch file (storages end past the file's end)")
    storages.stream = file
    return root


def materialize(obj: Any) -> Any:
    """Replaces every DeferredTensor in nested dicts/lists/tuples by its np.ndarray."""
    if isinstance(obj, DeferredTensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(v) for v in obj)
    return obj

