"""Reading files that others wrote, without running any of their code: the
project's security boundary, in one package.

Pickles (FLAME's .pkl, object .npy files) and torch checkpoints (.pt, .pth,
.tar) can name and call any importable function. Everything the project reads
of that kind goes through here:

    unpickler     the restricted unpickler (`SafeUnpickler`): an allow-list of
                  names that rebuild numpy arrays; stand-ins for chumpy and
                  scipy.sparse objects; torch.* names answered by torch_pickle
    safe_pickle   `load_pickle`, `load_npy`: FLAME's and DECA's asset files as
                  numpy arrays
    torch_pickle  torch tensors and storages rebuilt as numpy arrays (both of
                  torch's formats), every size, stride and offset checked
    torch_file    `load_torch_file` / `materialize`: torch.save files (zip or
                  legacy) with tensors read only when asked for;
                  `torchscript_state_dict`: the weights of a torch.jit.save
                  archive (OpenAI's CLIP .pt) under state_dict()'s keys, its
                  TorchScript classes as inert stand-ins, its code never read

A refused name raises `UnsafePickleError`, a damaged file a ValueError; both
are one line naming the file. Converters (face3d_jax/convert) read torch files
through `convert.torch_state.read_torch_file`, which uses torch's own
`weights_only` loader when torch is installed and `load_torch_file` otherwise.
"""

from face3d_jax.formats.safe_pickle import load_npy, load_pickle
from face3d_jax.formats.torch_file import (DeferredTensor, load_torch_file, materialize,
                                           torchscript_state_dict)
from face3d_jax.formats.unpickler import ChumpyStub, ReportedError, UnsafePickleError

__all__ = ["ChumpyStub", "DeferredTensor", "ReportedError", "UnsafePickleError",
           "load_npy", "load_pickle", "load_torch_file", "materialize", "torchscript_state_dict"]
