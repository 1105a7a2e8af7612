"""rosinality stylegan2-pytorch checkpoints -> our StyleGAN2 parameters (npz + json).

A rosinality checkpoint (`train.py`'s `{"g", "d", "g_ema", "g_optim",
"d_optim", "args"}`, or `convert_weight.py`'s `{"g_ema", "latent_avg"}`) is
read without torch (`torch_file`, a restricted reader; only the tensors of g,
g_ema, d and latent_avg are loaded) or with `torch.load(weights_only=True)`.
The configuration (resolution, style_dim, n_mlp, channel multiplier/cap, image
channels) is inferred from the shapes; `lr_mlp` is not stored in the files and
is taken as rosinality's default 0.01 unless given. Every expected key is
checked for presence and shape, blur kernels for their values, and unknown
keys are refused, each with one line naming the file, the key and the shapes.

The key tables and layout changes are in `stylegan2_keys`.
latent_avg: the checkpoint's if present, else the mean w of 4096 z drawn from
PRNG key 0 (rosinality's generate.py uses `mean_latent(4096)` the same way).

Output folder: `stylegan2.json` (config, parameter counts, source),
`g_ema.npz`, and `g.npz` / `d.npz` when the checkpoint has them; keys are the
'/'-joined paths of our modules' variables (e.g. `convs/3/conv/weight`).

    result = convert_rosinality("550000.pt", "ffhq_sg2/")
    g = load_generator("ffhq_sg2/")              # Generator with g_ema's weights
    d = load_discriminator("ffhq_sg2/")
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from face3d_jax.convert.stylegan2_keys import (discriminator_buffers, discriminator_table,
                                               generator_buffers, generator_table, infer_config,
                                               shape_of)
from face3d_jax.nets.stylegan2 import Discriminator, Generator, StyleGAN2Config, count_params

CONFIG_FILE = "stylegan2.json"


@dataclasses.dataclass
class ConversionResult:
    """What `convert_rosinality` wrote: config, Param counts (None if absent), files."""

    config: StyleGAN2Config
    generator_params: int
    discriminator_params: int | None
    files: list[Path]


# ------------------------------------------------------------------ conversion

def _array(x) -> np.ndarray:
    """np.ndarray, torch tensor or DeferredTensor -> float32 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


def convert_state_dict(state_dict: dict, table, buffers: dict,
                       origin: str) -> dict[str, np.ndarray]:
    """A rosinality state dict -> {our path: float32 array}, every key checked.

    Args:
      state_dict: {torch key: array-like (np.ndarray, torch tensor or DeferredTensor)}.
      table: rows of `generator_table` / `discriminator_table`; buffers: expected
        blur-kernel buffers; origin: e.g. "IN.pt: g_ema" for messages.
    Raises:
      ValueError (one line) on a missing/unexpected key, a wrong shape or blur kernel.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"{origin} is a {type(state_dict).__name__}, not a state dict")
    out = {}
    for key, path, shape, fn in table:
        if key not in state_dict:
            raise ValueError(f"{origin} has no '{key}' (expected shape {shape})")
        found = shape_of(state_dict[key])
        if found != shape:
            raise ValueError(f"{origin}['{key}'] has shape {found}, expected {shape}")
        out[path] = np.ascontiguousarray(fn(_array(state_dict[key])))
    for key, kernel in buffers.items():
        if key not in state_dict:
            continue  # buffers are not needed to run; older exports may omit them
        value = _array(state_dict[key])
        if value.shape != kernel.shape or not np.allclose(value, kernel, atol=1e-6):
            raise ValueError(f"{origin}['{key}'] (shape {value.shape}) is not the blur kernel "
                             f"{kernel.shape} of the configured blur taps")
    known = {row[0] for row in table} | set(buffers)
    extra = sorted(set(state_dict) - known)
    if extra:
        raise ValueError(f"{origin} has unexpected key '{extra[0]}' (shape "
                         f"{shape_of(state_dict[extra[0]])}; {len(extra)} unexpected in all): "
                         "not a rosinality StyleGAN2 of the inferred configuration")
    return out


def module_from_arrays(cls, cfg: StyleGAN2Config, arrays: dict[str, np.ndarray], origin: str):
    """Builds `cls(cfg)` (Generator or Discriminator) holding `arrays` ({path: array}),
    without initialising random weights first; every variable must be given."""
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(state))
    filled = {}
    for path, leaf in flat.items():
        key = "/".join(map(str, path))
        if key not in arrays:
            raise ValueError(f"{origin}: missing '{key}' (expected shape {tuple(leaf.shape)})")
        value = np.asarray(arrays[key])
        if value.shape != tuple(leaf.shape):
            raise ValueError(f"{origin}: '{key}' has shape {value.shape}, expected "
                             f"{tuple(leaf.shape)}")
        filled[path] = jax.numpy.asarray(value, leaf.dtype)
    extra = sorted(set(arrays) - {"/".join(map(str, p)) for p in flat})
    if extra:
        raise ValueError(f"{origin}: unexpected '{extra[0]}' ({len(extra)} unexpected in all)")
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(filled))
    return nnx.merge(graphdef, state)


def read_checkpoint(path: str | os.PathLike, reader: str = "auto") -> dict[str, Any]:
    """{"g_ema", "g", "d": state dict or None, "latent_avg": array or None} of a .pt.

    reader: "auto"/"restricted" (no torch), or "torch" (torch.load(weights_only=True)).
    """
    origin = os.fspath(path)
    if reader == "torch":
        import argparse

        import torch

        if not os.path.exists(origin):
            raise FileNotFoundError(f"{origin}: no such file")
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                root = torch.load(origin, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (torch raises many kinds for a bad file)
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            raise ValueError(f"{origin}: cannot load with torch.load ({reason})") from None
    elif reader in ("auto", "restricted"):
        from face3d_jax.formats.torch_file import load_torch_file

        root = load_torch_file(origin)
    else:
        raise ValueError(f"reader must be 'auto', 'restricted' or 'torch', got {reader!r}")
    if not isinstance(root, dict) or not ({"g_ema", "g"} & set(root)):
        keys = sorted(map(str, root))[:6] if isinstance(root, dict) else type(root).__name__
        raise ValueError(f"{origin}: not a rosinality StyleGAN2 checkpoint (no 'g_ema' or "
                         f"'g' state dict; found {keys})")
    out = {name: root.get(name) for name in ("g_ema", "g", "d")}
    avg = root.get("latent_avg")
    out["latent_avg"] = None if avg is None else _array(avg)
    return out


def convert_rosinality(path: str | os.PathLike, out_dir: str | os.PathLike, *,
                       reader: str = "auto", lr_mlp: float = 0.01) -> ConversionResult:
    """Converts a rosinality .pt into `out_dir` (see module docstring).

    Returns a ConversionResult with the Param counts of the generator (g_ema,
    or g) and the discriminator (None when the file has no 'd').
    """
    origin = os.fspath(path)
    ckpt = read_checkpoint(path, reader)
    main = "g_ema" if ckpt["g_ema"] is not None else "g"
    cfg = infer_config(ckpt[main], f"{origin}: {main}", lr_mlp)
    avg = ckpt["latent_avg"]
    gens = {name: generator_from_state_dict(ckpt[name], cfg, latent_avg=avg,
                                            origin=f"{origin}: {name}")
            for name in ("g_ema", "g") if ckpt[name] is not None}
    d = None if ckpt["d"] is None else discriminator_from_state_dict(ckpt["d"], cfg,
                                                                    origin=f"{origin}: d")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [_save(out / f"{name}.npz", g) for name, g in gens.items()]
    if d is not None:
        files.append(_save(out / "d.npz", d))
    g_params = count_params(gens[main])
    d_params = None if d is None else count_params(d)
    meta = {"config": _config_dict(cfg), "source": Path(origin).name, "generator": main,
            "generator_params": g_params, "discriminator_params": d_params,
            "latent_avg": "checkpoint" if avg is not None else "mean_latent(4096, key 0)"}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    files.append(out / CONFIG_FILE)
    return ConversionResult(cfg, g_params, d_params, files)


def generator_from_state_dict(state_dict: dict, config: StyleGAN2Config | None = None, *,
                              latent_avg=None, origin: str = "state dict") -> Generator:
    """A Generator holding a rosinality generator state dict's weights.

    Args:
      state_dict: {key: np.ndarray | torch.Tensor | DeferredTensor}, rosinality's
        layout (e.g. `g_ema.state_dict()`, noise buffers included).
      config: the StyleGAN2Config (None: inferred from the shapes, lr_mlp 0.01).
      latent_avg: (style_dim,) truncation centre; None: the mean w of 4096 z
        drawn from PRNG key 0 (as rosinality's generate.py `mean_latent(4096)`).
      origin: how error messages name the source.
    Raises:
      ValueError (one line naming the key and shapes) for a foreign state dict.
    """
    config = config or infer_config(state_dict, origin)
    arrays = convert_state_dict(state_dict, generator_table(config), generator_buffers(config),
                                origin)
    if latent_avg is not None:
        avg = _array(latent_avg)
        if avg.size != config.style_dim:
            raise ValueError(f"{origin}: latent_avg has shape {avg.shape}, expected "
                             f"({config.style_dim},)")
        arrays["latent_avg"] = avg.reshape(-1)
        return module_from_arrays(Generator, config, arrays, origin)
    arrays["latent_avg"] = np.zeros((config.style_dim,), np.float32)
    g = module_from_arrays(Generator, config, arrays, origin)
    g.latent_avg[...] = jax.jit(lambda key: g.mean_latent(4096, key))(jax.random.key(0))
    return g


def discriminator_from_state_dict(state_dict: dict, config: StyleGAN2Config, *,
                                  origin: str = "state dict") -> Discriminator:
    """A Discriminator holding a rosinality discriminator state dict's weights
    (arguments and errors as `generator_from_state_dict`; config is required: D's
    shapes do not tell style_dim)."""
    arrays = convert_state_dict(state_dict, discriminator_table(config),
                                discriminator_buffers(config), origin)
    return module_from_arrays(Discriminator, config, arrays, origin)


def _save(path: Path, module) -> Path:
    """Every variable of `module` (Params and buffers) as '/'-joined keys."""
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(module)))
    np.savez(path, **{"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()})
    return path


def _config_dict(cfg: StyleGAN2Config) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("dtype")
    d["blur_kernel"] = list(d["blur_kernel"])
    return d


def load_config(folder: str | os.PathLike, **overrides) -> StyleGAN2Config:
    """The StyleGAN2Config saved in a converted folder (overrides e.g. dtype=...)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (convert a checkpoint with "
                                "`face3d convert stylegan2` first)")
    try:
        d = json.loads(path.read_text())["config"]
        d["blur_kernel"] = tuple(d["blur_kernel"])
        return StyleGAN2Config(**{**d, **overrides})
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed StyleGAN2 config ({exc})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: corrupt npz ({exc})") from None


def load_generator(folder: str | os.PathLike, which: str = "g_ema", **overrides) -> Generator:
    """A Generator with the weights of `which` ("g_ema" or "g") of a converted folder."""
    cfg = load_config(folder, **overrides)
    path = Path(folder) / f"{which}.npz"
    return module_from_arrays(Generator, cfg, _load_npz(path), os.fspath(path))


def load_discriminator(folder: str | os.PathLike, **overrides) -> Discriminator:
    """The Discriminator of a converted folder."""
    cfg = load_config(folder, **overrides)
    path = Path(folder) / "d.npz"
    return module_from_arrays(Discriminator, cfg, _load_npz(path), os.fspath(path))

