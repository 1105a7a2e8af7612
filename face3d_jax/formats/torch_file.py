"""Reads torch.save files (.pt/.pth) and the weights of TorchScript archives as
numpy arrays, without torch and without running code.

Two torch.save formats exist: the zip archive of torch >= 1.6
(`<name>/data.pkl`, one member `<name>/data/<key>` of raw bytes per storage,
`<name>/byteorder`) and the legacy stream of older torch (pickles of a magic
number, the protocol and sys_info, the main pickle, the storage keys, then each
storage as an int64 element count and its bytes); rosinality's 2020
checkpoints may be either. The main pickle goes through the project's
restricted unpickler (`face3d_jax.formats.unpickler`): tensors become
`DeferredTensor`s (storage key, dtype, offset, size, stride) and only the
tensors a caller asks for are read (`materialize`), so the optimizer states of
a training checkpoint are never loaded. `argparse.Namespace` (rosinality
stores its training arguments) becomes an inert stand-in holding its
attributes as a dict.

A TorchScript archive (torch.jit.save; OpenAI's released CLIP .pt files) is
the same zip with more members: `<name>/data.pkl` pickles the module tree as
objects of classes `__torch__.<module path>.<Class>` (NEWOBJ, then BUILD with
the module's attribute dict: its parameters and buffers as tensors rebuilt by
torch._utils._rebuild_tensor_v2 from `<name>/data/<key>`, `training`, plain
attributes, submodules); `<name>/code/` holds the classes as TorchScript
source, `<name>/constants.pkl` the tensor constants of that code (their bytes
in `<name>/constants/<key>` as torch 2.x writes them), plus `version`,
`byteorder`, `.data/serialization_id` and, for traces, `traced_inputs.pkl`. Here the `__torch__` classes become inert
`ScriptObjectStub`s keeping their attribute dicts, and
`torchscript_state_dict` names the tensors as torch.jit.load(path).state_dict()
does. Only data.pkl and the `data/` storages asked for are read: not code/
(torch.jit.load compiles it), not constants.pkl (code constants, which no
state dict holds).

    root = load_torch_file("550000.pt")           # dicts/lists of DeferredTensor
    arrays = materialize(root["g_ema"])           # {key: np.ndarray}
    weights = torchscript_state_dict("ViT-B-32.pt")   # {"visual.proj": DeferredTensor, ...}
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


class ScriptObjectStub(Stub):
    """An object of a TorchScript class (`__torch__.<path>.<Class>`, its name in
    `qualname`) from a TorchScript archive's data.pkl. `state` is what the file's
    BUILD gave it, kept as written: for a module, its attribute dict (attribute
    name -> DeferredTensor, ScriptObjectStub, bool, int, ...). No method of the
    class is looked up or run; the class in the file's code/ is never read."""

    def __setstate__(self, state):
        # Not Stub's (dict, slots) merge: TorchScript writes a plain attribute dict,
        # or for a class with its own __getstate__ whatever that returned.
        self.state = state


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
    """The main pickle of a torch file: storages are persistent ids, tensors deferred.

    torchscript: the pickle is a TorchScript archive's data.pkl, whose
    `__torch__.*` classes become ScriptObjectStubs and whose typed containers
    (torch.jit._pickle's build_intlist, ..., restore_type_tag) their plain values.
    """

    def __init__(self, file: BinaryIO, storages: _Storages, byteorder: str,
                 torchscript: bool = False):
        super().__init__(file, storages.origin, torch_pickle.find_class)
        self.storages, self.byteorder = storages, byteorder
        self.torchscript = torchscript

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *args: data
        if (module, name) == ("argparse", "Namespace"):
            return NamespaceStub
        if self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            return self.stand_in(ScriptObjectStub, module, name)
        if self.torchscript and module == "torch.jit._pickle":
            if name in ("build_intlist", "build_doublelist", "build_boollist",
                        "build_tensorlist"):
                return self._typed_list
            if name == "restore_type_tag":
                return self._restore_type_tag
        return super().find_class(module, name)

    def _typed_list(self, data):
        """torch.jit._pickle.build_*list(list): the list itself, as in torch."""
        if not isinstance(data, list):
            raise ReportedError(f"{self.origin}: malformed TorchScript list "
                                f"({type(data).__name__})")
        return data

    def _restore_type_tag(self, value, type_str=None):
        """torch.jit._pickle.restore_type_tag(value, type string): the value; the
        tag only gives the TorchScript type of a list or dict."""
        return value

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
      path: a .pt/.pth file (zip or legacy format), or a TorchScript archive.
    Returns:
      The saved object (dicts, lists, numbers, strings, DeferredTensor,
      NamespaceStub); for a TorchScript archive the root module as a
      ScriptObjectStub (`torchscript_state_dict` names its tensors). The file
      stays open while its tensors are referenced.
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
    if file.read(4) == _ZIP_MAGIC:
        # A zip's directory is at its end: a cut download starts like an archive
        # but has none, and would otherwise be reported as "not a torch file".
        raise ValueError(f"{origin}: truncated or corrupt zip archive (no central directory)")
    file.seek(0)
    return _load_legacy(file, storages)


_ZIP_MAGIC = b"PK\x03\x04"


def _data_pickle(names: list[str]) -> str | None:
    """The archive's `<name>/data.pkl` member (torch writes one, one level deep)."""
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    return pickles[0] if len(pickles) == 1 else None


def _holds_torchscript(names: list[str], prefix: str) -> bool:
    # torch.jit.save writes the classes' code and the code's constants beside
    # data.pkl; torch.save writes neither.
    return f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/")
                                                     for n in names)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether path is a readable zip laid out as torch.jit.save writes it
    (`<name>/data.pkl` with `<name>/code/` or `<name>/constants.pkl` beside it).
    Only the zip's directory is read; False for anything else, missing files too."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    data = _data_pickle(names)
    return data is not None and _holds_torchscript(names, data[:-len("data.pkl")])


def _load_zip(file: BinaryIO, storages: _Storages) -> Any:
    origin = storages.origin
    try:
        archive = zipfile.ZipFile(file)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{origin}: corrupt zip archive ({exc})") from None
    data_pkl = _data_pickle(names)
    if data_pkl is None:
        raise ValueError(f"{origin}: not a torch.save archive (no single data.pkl)")
    storages.zip, storages.prefix = archive, data_pkl[:-len("data.pkl")]
    torchscript = _holds_torchscript(names, storages.prefix)
    byteorder = "<"
    try:
        if f"{storages.prefix}byteorder" in names:
            order = archive.read(f"{storages.prefix}byteorder").strip()
            byteorder = ">" if order == b"big" else "<"
        data = archive.read(data_pkl)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{origin}: cannot read data.pkl ({exc})") from None
    return run(_TorchFileUnpickler(io.BytesIO(data), storages, byteorder, torchscript), origin)


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


# Bounds on walking a module tree from a file: a pickle can make a module its own
# descendant (a cycle) or reach one module by exponentially many paths (a DAG).
_MAX_DEPTH = 100
_MAX_MODULES = 1_000_000


def torchscript_state_dict(path: str | os.PathLike) -> dict[str, DeferredTensor]:
    """torch.jit.load(path).state_dict() of a TorchScript archive, without torch
    and without compiling or running the archive's code.

    Args:
      path: a torch.jit.save archive (e.g. OpenAI's CLIP ViT-B-32.pt).
    Returns:
      {dotted key: DeferredTensor}, the keys, order and tensors of torch's
      state_dict() (see `script_module_state_dict`); each tensor keeps the
      file's dtype and shape (`.numpy()` reads it, e.g. float16 for OpenAI's).
    Raises:
      FileNotFoundError if missing; ValueError (one line, naming the file) if it
      is not a TorchScript archive, is truncated, or names a class outside the
      allow-list (`UnsafePickleError`).
    """
    return script_module_state_dict(load_torch_file(path), os.fspath(path))


def script_module_state_dict(root: Any, origin: str) -> dict[str, DeferredTensor]:
    """The parameters and buffers of a module tree read from a TorchScript
    archive (`load_torch_file`), keyed as torch's Module.state_dict() keys them.

    A module is a ScriptObjectStub whose attribute dict holds the bool
    `training` (every TorchScript module has it; objects of TorchScript classes
    that are not modules do not, and state_dict skips them). Its parameters and
    buffers are the tensors written before `training`: torch lays a module's
    attributes out as its parameters, then its buffers, then the plain
    attributes of the Python module's __dict__, which nn.Module.__init__ starts
    with `training`, then the submodules (torch.jit._recursive's concrete
    module type; a trace keeps no plain attributes but `training` and
    `_is_full_backward_hook`), and data.pkl writes them in that order (OpenAI's
    released archives too: e.g. their top module's `positional_embedding`,
    `text_projection`, `logit_scale`, `input_resolution`, `context_length`,
    `vocab_size`, then `training`, then `visual`, `transformer`, ...). Tensors after
    `training` are plain tensor attributes of a scripted module (e.g. an
    unregistered attention mask), which state_dict leaves out; the
    parameter/buffer split itself is only written in code/ (`__parameters__`,
    `__buffers__`), which is not read, and state_dict does not need it. Keys:
    a module's own entries, then each submodule's under `name.`, in file
    order; a tensor shared by two modules appears under both keys, as in torch.
    None (a Linear without bias), numbers, strings and containers are skipped.

    Args:
      root: the object `load_torch_file` returned for the archive.
      origin: the file's name, for messages.
    Returns:
      {dotted key: DeferredTensor}.
    Raises:
      ValueError (one line, naming `origin`) if root is not a module, a module
      in the tree was pickled through its own __getstate__ (its tensors are not
      named without running its code), or the tree is cyclic or too large.
    """
    if not _is_script_module(root):
        what = root.qualname if isinstance(root, ScriptObjectStub) else type(root).__name__
        raise ValueError(f"{origin}: not a TorchScript module archive (data.pkl holds "
                         f"{shown(what)}, expected a __torch__ module)")
    out: dict[str, DeferredTensor] = {}
    # Depth first, as state_dict recurses: a module's own entries, then each
    # submodule's in attribute order (a stack, so a deep file cannot exhaust
    # Python's recursion; the bounds stop cycles and shared-module blow-ups).
    stack: list[tuple[str, ScriptObjectStub, int]] = [("", root, 0)]
    visits = 0
    while stack:
        prefix, module, depth = stack.pop()
        visits += 1
        if depth > _MAX_DEPTH:
            raise ValueError(f"{origin}: TorchScript module tree nested deeper than "
                             f"{_MAX_DEPTH} modules (a cycle?) at '{shown(prefix)}'")
        if visits + len(out) > _MAX_MODULES:
            raise ValueError(f"{origin}: TorchScript module tree has more than "
                             f"{_MAX_MODULES} modules and tensors")
        names = list(module.state)
        for name in names[:names.index("training")]:
            if isinstance(module.state[name], DeferredTensor):
                out[f"{prefix}{name}"] = module.state[name]
        children = []
        for name in names:
            value = module.state[name]
            if not isinstance(value, ScriptObjectStub):
                continue
            if not isinstance(value.state, dict):  # a bad file, not a bad argument
                raise ValueError(  # noqa: TRY004
                    f"{origin}: TorchScript object '{shown(prefix)}{shown(name)}' "
                    f"({shown(value.qualname)}) was saved through its own __getstate__; "
                    "its tensors cannot be named without running its code")
            if _is_script_module(value):
                children.append((f"{prefix}{name}.", value, depth + 1))
        stack.extend(reversed(children))
    return out


def _is_script_module(obj: Any) -> bool:
    """Whether obj is a TorchScript module's stand-in (an attribute dict with `training`)."""
    return (isinstance(obj, ScriptObjectStub) and isinstance(obj.state, dict)
            and isinstance(obj.state.get("training"), bool))
