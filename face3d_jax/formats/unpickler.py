"""The restricted unpickler: the core of the project's security boundary.

A pickle may name any importable callable and call it, so `pickle.load` on a
downloaded file is arbitrary code execution. `SafeUnpickler.find_class`
admits only the names needed to rebuild numpy arrays (numpy's own
reconstruction functions, a few containers); foreign classes of FLAME's files
(chumpy, scipy.sparse) become inert stand-ins that record their state
(`ChumpyStub`, `SparseStub`), and torch.* names are answered by a lookup the
caller passes (`torch_pickle.find_class`, our parser of torch's formats), or
refused. Subclasses widen the list for one kind of file only (`torch_file`'s
unpickler of TorchScript archives turns their `__torch__.*` classes into
stand-ins through `stand_in`). Everything else is refused with
`UnsafePickleError`, one line naming the file and the name. `run` maps every
failure of a damaged stream to one ValueError line naming the file.
"""

from __future__ import annotations

import collections
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


class ReportedError(ValueError):
    """A ValueError whose one-line message already names the file."""


class UnsafePickleError(ReportedError):
    """A pickle names a callable or class outside the allow-list."""


# ---------------------------------------------------------------- stand-ins


class Stub:
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


class ChumpyStub(Stub):
    """A chumpy object; `Ch` pickles its __dict__, whose 'x' holds the array."""


class SparseStub(Stub):
    """A scipy.sparse matrix; its state holds data/indices/indptr/_shape."""


# ---------------------------------------------------------------- unpickler


def shown(text: Any) -> str:
    """A name from a file, safe to print on one line."""
    return repr(str(text))[1:-1][:120]


class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose find_class admits only data-rebuilding names.

    torch_lookup: (module, name, origin) -> object or None, what a torch.*
    name stands for (`torch_pickle.find_class`); None refuses every torch name.
    """

    def __init__(self, file: BinaryIO, origin: str, torch_lookup=None):
        super().__init__(file, encoding="latin1")
        self.origin = origin
        self.torch_lookup = torch_lookup
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        found = self._lookup(_PY2_MODULES.get(module, module), name)
        if found is None:
            raise UnsafePickleError(f"{self.origin}: refusing to load '{shown(module)}."
                                    f"{shown(name)}' from a pickle ({ALLOWED})")
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
            return self.stand_in(ChumpyStub, module, name)
        if module.startswith("scipy.sparse") and _SPARSE_CLASS.fullmatch(name):
            return self.stand_in(SparseStub, module, name)
        if (module == "torch" or module.startswith("torch.")) and self.torch_lookup is not None:
            return self.torch_lookup(module, name, self.origin)
        return None

    def stand_in(self, base: type, module: str, name: str) -> type:
        """The inert subclass of `base` (a Stub) standing for the pickle's class
        `module.name`; one per name and unpickler, so objects of one class share it.
        Only the name is kept (as `qualname`): nothing is looked up or imported."""
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
                                    f"{shown(getattr(subtype, '__name__', subtype))} ({ALLOWED})")
        return _NP_RECONSTRUCT(np.ndarray, shape, dtype)

    def _reconstructor(self, cls, base, state):
        """copyreg._reconstructor (protocol 0/1 objects), for our stand-ins only."""
        if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
            raise UnsafePickleError(f"{self.origin}: refusing copyreg._reconstructor of "
                                    f"{shown(getattr(cls, '__name__', cls))} ({ALLOWED})")
        return cls.__new__(cls)

    def _latin1_encode(self, text, encoding="utf-8"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"{self.origin}: refusing _codecs.encode with encoding "
                                    f"'{shown(encoding)}' ({ALLOWED})")
        return text.encode("latin1")

def unpickle(file: BinaryIO, origin: str, torch_lookup=None):
    """Unpickles one object from file with the restricted unpickler (see `run`)."""
    return run(SafeUnpickler(file, origin, torch_lookup), origin)


def run(unpickler: SafeUnpickler, origin: str):
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


def open_binary(path: str | os.PathLike, origin: str) -> BinaryIO:
    """open(path, "rb"), its failures as one line naming `origin`."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{origin}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read ({exc.strerror or exc})") from None
