"""Images from a converted StyleGAN2 folder (`face3d sample`).

    paths = sample_images("ffhq_sg2/", seed=0, num=4, truncation=0.5,
                          noise_mode="const", out="face.png")

With noise_mode "const" the generator's own noise buffers are used, so each
image is a pure function of its z; with "random" the noise comes from the
seed (or key 0 when z is given).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def load_z(path: str | os.PathLike, style_dim: int) -> np.ndarray:
    """A .npy of z: (style_dim,) or (B, style_dim) float -> (B, style_dim) float32."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from None
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != style_dim or not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"{path}: z has shape {z.shape} and dtype {z.dtype}, expected float "
                         f"({style_dim},) or (B, {style_dim})")
    return z.astype(np.float32)


def to_uint8(images: jax.Array) -> np.ndarray:
    """(B, H, W, C) float in [-1, 1] -> (B, H, W, C) uint8 (clipped)."""
    x = np.asarray(jnp.clip((images + 1) * 127.5 + 0.5, 0, 255))
    return x.astype(np.uint8)


def sample_images(folder: str | os.PathLike, out: str | os.PathLike, *,
                  z: np.ndarray | None = None, seed: int | None = None, num: int = 1,
                  truncation: float = 1.0, noise_mode: str = "const") -> list[Path]:
    """Generates images with a converted folder's g_ema and writes PNGs.

    Args:
      folder: output of `convert_rosinality`.
      out: PNG path; with several images `stem_0000.png`, `stem_0001.png`, ...
      z: (B, style_dim) float32 latents, or None to draw `num` from `seed`.
      truncation: psi, toward the checkpoint's latent_avg (1 = none).
      noise_mode: "const" (the checkpoint's noise buffers), "random" or "none".
    Returns:
      The written paths.
    """
    from PIL import Image

    from face3d_jax.convert.stylegan2 import load_generator

    g = load_generator(folder)
    cfg = g.config
    key = jax.random.key(0 if seed is None else seed)
    kz, kn = jax.random.split(key)
    if z is None:
        z = jax.random.normal(kz, (num, cfg.style_dim), jnp.float32)
    graphdef, state = nnx.split(g)

    @jax.jit
    def run(state, z, key):
        return nnx.merge(graphdef, state)(z, key=key, truncation=truncation,
                                          noise_mode=noise_mode)

    images = to_uint8(run(state, jnp.asarray(z), kn))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [
        out.with_name(f"{out.stem}_{i:04d}{out.suffix or '.png'}") for i in range(len(images))]
    for image, path in zip(images, paths):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image[..., :3]).save(path)
    return paths
