"""F's head for the teacher world: Fisher's discriminant of a real face
network's embeddings, fitted on teacher identities (`nets.identity`).

The paper's F is a face network trained on real people, and its losses rely
on F telling people apart. A real network (dlib's) does see who is who in the
teacher world, but it places every synthetic face close to every other
(cosine 0.93 between different identities against 0.97 within one), so its
identity loss barely separates right from wrong. `fit_identity_head` renders
G identities seen K ways (`identity_views`: expression, pose, light, camera
and background vary), crops them exactly as the dataset does, embeds the
aligned chips with the real network and fits `nets.identity.fit_lda`: the
linear map under which one identity's views lie close and different
identities far apart. The identities come from a key of their own
(`head_key`), so no training or evaluation identity is among them.

    head = fit_identity_head(world, network, head_key(0), identities=256, views=4,
                             crop_size=64, dim=32)
    save_identity_head("runs/tiny/identity_head.npz", head, settings)
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.faces.align import RENDER_TO_INDEX
from face3d_jax.nets.identity import IdentityHead, IdentityNetwork, fit_lda
from face3d_jax.teacher.held_out import held_out_from_w, identity_views
from face3d_jax.teacher.params import Teacher

HEAD_FILE = "identity_head.npz"
# Folded into the run's seed: a stream no dataset or evaluation draw uses
# (jax's threefry gives the same first rows for the same key at any size).
_HEAD_STREAM = 0x1D_4EAD


def head_key(seed: int) -> jax.Array:
    """The key the head's identities are drawn from, for a run's seed."""
    return jax.random.fold_in(jax.random.key(int(seed)), _HEAD_STREAM)


def embed_views(world: Teacher, network: IdentityNetwork, w: np.ndarray, crop_size: int,
                batch: int = 16) -> np.ndarray:
    """F's embeddings of teacher samples cropped as the dataset crops them.

    Args:
      world: the teacher; network: F (its head, if any, applies);
      w: (N, n_latent, style_dim) float32; crop_size: the dataset's crop side;
      batch: images per compiled call (render and F).
    Returns:
      (N, D) float32.
    """
    held = held_out_from_w(world, w, crop_size, batch)
    embed = jax.jit(lambda net, x, lmk: net(x, lmk)[0])
    out = []
    for start in range(0, held.count, batch):
        idx = np.minimum(np.arange(start, start + batch), held.count - 1)
        crops = jnp.asarray(held.crop[idx])
        landmarks = jnp.asarray(held.landmarks[idx] + RENDER_TO_INDEX)
        out.append(np.asarray(embed(network, crops, landmarks))[:min(batch, held.count - start)])
    return np.concatenate(out)


def fit_identity_head(world: Teacher, network: IdentityNetwork, key: jax.Array, *,
                      identities: int, views: int, crop_size: int, dim: int,
                      ridge: float = 1e-3, chunk: int = 64, progress=None) -> IdentityHead:
    """Fits F's head on G = `identities` teacher identities seen K = `views` ways.

    Args:
      world: the teacher; network: F without a head; key: `head_key(seed)`;
      identities: G >= 2; views: K >= 2; crop_size: the dataset's crop side;
      dim: the head's output size; ridge: `fit_lda`'s regulariser;
      chunk: identities rendered at a time (bounds memory);
      progress: optional callable(done, total) after each chunk.
    Returns:
      An `IdentityHead` (D -> dim).
    """
    if network.head is not None:
        raise ValueError("fit_identity_head: the network already has a head")
    if identities < 2 or views < 2:
        raise ValueError(f"fit_identity_head: needs at least 2 identities seen at least twice, "
                         f"got {identities} x {views}")
    w = identity_views(world, key, identities, views)
    embeddings = []
    for start in range(0, identities, chunk):
        part = w[start * views:min(identities, start + chunk) * views]
        embeddings.append(embed_views(world, network, part, crop_size))
        if progress is not None:
            progress(min(identities, start + chunk), identities)
    labels = np.repeat(np.arange(identities), views)
    mean, projection = fit_lda(np.concatenate(embeddings), labels, dim, ridge)
    return IdentityHead(mean, projection)


def save_identity_head(path: str | os.PathLike, head: IdentityHead, settings: dict) -> Path:
    """Writes the head and the settings it was fitted with (a JSON-able dict) to
    an npz, atomically (a rename), so an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mean=np.asarray(head.mean[...]), projection=np.asarray(head.projection[...]),
             settings=np.asarray(json.dumps(settings, sort_keys=True)))
    os.replace(tmp, path)
    return path


def load_identity_head(path: str | os.PathLike, settings: dict | None = None) -> IdentityHead:
    """Reads a head written by `save_identity_head` (no pickles).

    settings: when given, the head must have been fitted with these; a
    difference is a ValueError naming the file and the first differing key.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            mean, projection = data["mean"], data["projection"]
            stored = json.loads(str(data["settings"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (an identity head)") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not an identity head written by face3d "
                         f"({type(exc).__name__}: {exc})") from None
    if settings is not None:
        settings = json.loads(json.dumps(settings, sort_keys=True))  # as stored: lists, not tuples
        for key in sorted(set(settings) | set(stored)):
            if stored.get(key) != settings.get(key):
                raise ValueError(f"{path}: fitted with {key}={stored.get(key)!r}, the config "
                                 f"asks for {settings.get(key)!r}; delete the file to refit")
    return IdentityHead(mean, projection)
