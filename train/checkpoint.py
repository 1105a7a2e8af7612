"""Checkpoints of the trainer's one state pytree plus a JSON metadata dict.

A thin wrapper of `orbax.checkpoint.CheckpointManager`: each step folder holds
two items, `state` (the pytree, `StandardSave`/`StandardRestore`: tensorstore
arrays, no pickle) and `meta` (`JsonSave`/`JsonRestore`: e.g. the data loader
position and the config name).

Typed PRNG key arrays (`jax.random.key`) are written as their raw `key_data`
(uint32) and wrapped again on restore with the implementation of the matching
leaf of `abstract_state`, so the file format does not depend on orbax's own key
support and callers pass their state as is.

Restores are checked against the saved tree before any array is read: a
different set of leaves, or a leaf with another shape or dtype, is a one-line
ValueError naming the step folder. Orbax would otherwise cast dtypes silently.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

_STATE, _META = "state", "meta"
_MAX_LISTED = 3  # mismatching leaves named in an error; the rest are counted


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(state: Any) -> Any:
    """Typed key arrays -> their uint32 key data (shape + (impl words,))."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _key_impl(x: Any) -> Any:
    # key_impl needs a key array, and an abstract leaf is not one; tracing one
    # through eval_shape gives a key tracer whose impl is static.
    found = []
    jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), x)
    return found[0]


def _abstract_key_data(x: Any) -> jax.ShapeDtypeStruct:
    data = jax.eval_shape(jax.random.key_data, x)
    # A sharding over the key array's dims also fits its key data: the trailing
    # impl-words dim is left unpartitioned (replicated).
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))


def _one_line(err: BaseException, limit: int = 300) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" (+{more} more)" if more > 0 else "")


def _tree_mismatch(saved: Any, target: Any) -> str | None:
    """Differences between saved metadata and the (key-data) target tree, or None.

    Both trees are compared in orbax's serialized form (namedtuples as dicts,
    tuples as lists), the form in which the saved tree is stored.
    """
    flat_saved = ocp.tree.to_flat_dict(saved)
    flat_target = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(target, keep_empty_nodes=True))
    name = lambda path: "/".join(str(p) for p in path)  # noqa: E731
    problems = []
    missing = sorted(name(p) for p in flat_target.keys() - flat_saved.keys())
    extra = sorted(name(p) for p in flat_saved.keys() - flat_target.keys())
    if missing:
        problems.append(f"not in checkpoint: {_describe(missing)}")
    if extra:
        problems.append(f"not in abstract_state: {_describe(extra)}")
    differ = []
    for path in sorted(flat_target.keys() & flat_saved.keys(), key=name):
        s, t = flat_saved[path], flat_target[path]
        s_shape, t_shape = getattr(s, "shape", None), getattr(t, "shape", None)
        s_dtype, t_dtype = getattr(s, "dtype", None), getattr(t, "dtype", None)
        if s_shape is not None and t_shape is not None and tuple(s_shape) != tuple(t_shape):
            differ.append(f"{name(path)} shape saved {tuple(s_shape)} vs {tuple(t_shape)}")
        elif s_dtype is not None and t_dtype is not None and s_dtype != t_dtype:
            differ.append(f"{name(path)} dtype saved {s_dtype} vs {t_dtype}")
    if differ:
        problems.append(_describe(differ))
    return "; ".join(problems) or None


class Checkpointer:
    """Saves and restores (state pytree, JSON meta) every `save_every` steps.

    Args:
      directory: folder of the step folders (created if missing).
      keep: number of most recent checkpoints kept on disk (>= 1).
      save_every: `save(step, ...)` writes when step % save_every == 0 (>= 1).
      async_save: write in a background thread; `save` returns once the
        arrays are copied to host, so the caller may donate or delete them.
      read_only: only read (the directory must exist): nothing in it is
        created, cleaned up or deleted, so a run being trained can be read.

    Use as a context manager, or call `close()`, so pending writes finish.
    """

    def __init__(self, directory, *, keep: int = 3, save_every: int, async_save: bool = True,
                 read_only: bool = False):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every must be an int >= 1, got {save_every!r}")
        # orbax's array writer (tensorstore) wants an absolute path: a relative
        # local one, e.g. `--workdir runs/tiny`, is made absolute here.
        if "://" not in str(directory):
            directory = os.path.abspath(os.fspath(directory))
        self.directory = epath.Path(directory)
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no such checkpoint folder")
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.save_every, self.read_only = save_every, read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only, read_only=read_only)
        # Explicit handlers: item metadata and restores of a folder written by
        # an earlier process must not depend on what this process has saved.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                           _META: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts writing `state` and `meta` as checkpoint `step`.

        Args:
          step: int >= 0, the step folder's name.
          state: pytree of jax.Array (any shape, dtype and sharding, typed PRNG
            keys included); containers: dicts, lists, tuples, namedtuples,
            flax struct dataclasses, nnx.State.
          meta: JSON-serializable dict (finite floats only).
          force: write even when step % save_every != 0 (e.g. on preemption).

        Returns:
          True if a write was started; False if the step is not a multiple of
          `save_every` (and not forced) or is already on disk (never overwritten).
        """
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only: not saving step {step}")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        if not (force or step % self.save_every == 0) or step in self._manager.all_steps():
            return False
        try:
            # A JSON copy: invalid meta fails here, not in the writer thread, and
            # the caller may mutate its dict while the async write runs.
            meta = json.loads(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta for step {step} is not JSON: {_one_line(err)}") from None
        # An earlier async write that failed is re-raised by orbax here.
        return bool(self._written(
            self._manager.save, step, force=True,  # the save_every policy is ours, see above
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(_keys_to_data(state)),
                _META: ocp.args.JsonSave(meta)})))

    def _written(self, fn, *args, **kwargs):
        """fn(...) of the manager; a failed write (here or in the async thread)
        becomes a one-line OSError naming the directory."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # orbax/tensorstore raise many types
            raise OSError(f"checkpoint write under {self.directory} failed: "
                          f"{_one_line(err)}") from None

    def latest_step(self) -> int | None:
        """The largest step on disk (finished saves only), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps on disk, ascending."""
        return sorted(self._manager.all_steps())

    def saved_step(self, step: int | None = None) -> int:
        """`step` if it is on disk, else the latest one when step is None;
        FileNotFoundError (one line, listing what is saved) otherwise."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint saved yet")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step} (saved: "
                                    f"{', '.join(map(str, steps))})")
        return max(steps) if step is None else int(step)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Reads checkpoint `step` (default: the latest).

        Args:
          abstract_state: pytree of jax.ShapeDtypeStruct (e.g. `jax.eval_shape`
            of the state initialiser with `.sharding` set), or of arrays; the
            restored arrays get its shapes, dtypes and shardings, typed PRNG
            key leaves included.
          step: the step to read; None for the latest.

        Returns:
          (state, meta): the pytree with abstract_state's structure, and the
          JSON dict saved with it.

        Raises:
          FileNotFoundError: no checkpoint (or not that step) in the directory.
          ValueError (one line, naming the step folder): the saved tree differs
            from abstract_state, or the checkpoint's files are unreadable.
        """
        self._manager.wait_until_finished()  # a pending save of this step
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
        where = f"checkpoint {self.directory / str(step)}"

        leaves, treedef = jax.tree.flatten(abstract_state)
        impls = [_key_impl(x) if _is_key(x) else None for x in leaves]
        target = treedef.unflatten(
            [x if impl is None else _abstract_key_data(x) for x, impl in zip(leaves, impls)])
        try:
            saved = self._manager.item_metadata(step)[_STATE]
            saved = getattr(saved, "tree", saved)
            if saved is None:
                raise ValueError("no tree metadata")
            mismatch = _tree_mismatch(saved, target)
        except Exception as err:  # orbax/tensorstore/json raise many types
            raise ValueError(f"{where}: unreadable metadata: {_one_line(err)}") from None
        if mismatch:
            raise ValueError(f"{where} does not match abstract_state: {mismatch}")
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardRestore(target),
                _META: ocp.args.JsonRestore()}))
        except Exception as err:
            raise ValueError(f"{where}: unreadable: {_one_line(err)}") from None
        restored = treedef.flatten_up_to(out[_STATE])
        state = treedef.unflatten([
            x if impl is None else jax.random.wrap_key_data(x, impl=impl)
            for x, impl in zip(restored, impls)])
        meta = out[_META]
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: meta is {type(meta).__name__}, not a JSON object")
        return state, meta

    def wait(self) -> None:
        """Blocks until pending async saves are on disk; a failed one raises a
        one-line OSError naming the directory."""
        self._written(self._manager.wait_until_finished)

    def close(self) -> None:
        """Waits for pending saves (OSError as `wait`) and releases the manager's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
