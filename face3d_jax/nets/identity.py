"""F, the face network of the identity and perceptual losses (paper Eq. 1 and
Sec. 4.1), as one module: the face aligned as the network was trained, the
network, and optionally a linear head fitted to a world of faces.

    f = IdentityNetwork(dlib_resnet.load_dlib_resnet(), chip_size=150)
    emb, maps = f(images, landmarks)      # (B, D), {name: (B, h, w, C)}

- Alignment (`faces.align`): dlib's network gets dlib's chip (the 68
  landmarks, padding 0.25), ArcFace insightface's 5-point template at 112^2.
  A face network fed a loose crop tells people apart far worse (measured in
  the teacher world: rank-1 identification 11% unaligned against 50% aligned
  by the same landmarks, dlib's own network). `chip_matrices` gives the map
  from image to chip, `embed` the embedding of images warped by given maps
  (the perceptual term warps the render with the target's map, so that the
  two are compared pixel for pixel).
- Backbones: dlib's face-recognition ResNet (`DlibFaceResNet`, 128-d, 0..255
  RGB input) and ArcFace's iresnet (`IResNet`, 512-d, [-1, 1] RGB at 112^2).
  Mid-level maps: dlib's levels 4, 3, 2, ArcFace's stages 1-3.
- Head (`IdentityHead`): e -> (e - mean) P, a linear map fitted by Fisher's
  linear discriminant (`fit_lda`: the directions that maximise the spread
  between identities over the spread within one, Belhumeur et al. 1997's
  Fisherfaces). A real network trained on photographs places the faces of a
  synthetic world close together (the teacher world: dlib's cosine 0.93
  between different identities, 0.97 within one), although what tells them
  apart is in its features; the head, fitted on identities of that world
  disjoint from every training and evaluation identity, spreads them out
  (`teacher.identity_head`). The backbone stays the real, frozen network.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_jax.faces import align
from face3d_jax.nets import arcface, dlib_resnet


class IdentityHead(nnx.Module):
    """A frozen linear head on embeddings: (e - mean) @ projection.

    mean: (D,) float32; projection: (D, K) float32 (nnx.Variable, not Param:
    no optimizer sees them).
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray):
        mean = np.asarray(mean, np.float32)
        projection = np.asarray(projection, np.float32)
        if mean.ndim != 1 or projection.ndim != 2 or projection.shape[0] != mean.shape[0]:
            raise ValueError(f"identity head: mean {mean.shape} and projection "
                             f"{projection.shape} are not (D,) and (D, K)")
        self.mean = nnx.Variable(jnp.asarray(mean))
        self.projection = nnx.Variable(jnp.asarray(projection))

    def __call__(self, embeddings: jax.Array) -> jax.Array:
        """(B, D) float -> (B, K) float32."""
        return (embeddings.astype(jnp.float32) - self.mean[...]) @ self.projection[...]


def fit_lda(embeddings: np.ndarray, labels: np.ndarray, dim: int,
            ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Fisher's linear discriminant of labelled embeddings.

    With the within-class scatter S_w (regularised: S_w + ridge * tr(S_w) / D
    I) and the between-class scatter S_b of the class means, the projection
    whitens S_w (P = L V with L L^T = S_w^-1, so P^T S_w P = I) and keeps the
    `dim` leading eigenvectors V of L^T S_b L: in the projected space the
    within-class spread is the same in every direction and the identities lie
    as far apart as a linear map can put them.

    Args:
      embeddings: (N, D) float; labels: (N,) int, at least 2 classes, each
        with at least 2 samples; dim: K <= D; ridge: relative regulariser.
    Returns:
      mean (D,) float32 (the embeddings' mean) and projection (D, K) float32.
    """
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"fit_lda: embeddings {x.shape} and labels {labels.shape} are not "
                         "(N, D) and (N,)")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ValueError(f"fit_lda: needs at least 2 classes of at least 2 samples each, got "
                         f"{len(classes)} classes, the smallest of {counts.min()}")
    if not 1 <= dim <= x.shape[1]:
        raise ValueError(f"fit_lda: dim must be in 1..{x.shape[1]}, got {dim}")
    mean = x.mean(axis=0)
    xc = x - mean
    means = np.stack([xc[labels == c].mean(axis=0) for c in classes])
    within = sum((xc[labels == c] - means[i]).T @ (xc[labels == c] - means[i])
                 for i, c in enumerate(classes)) / len(x)
    between = (means.T * (counts / len(x))) @ means
    d = x.shape[1]
    within = within + ridge * np.trace(within) / d * np.eye(d)
    whiten = np.linalg.cholesky(np.linalg.inv(within))  # L L^T = S_w^-1
    values, vectors = np.linalg.eigh(whiten.T @ between @ whiten)
    order = np.argsort(values)[::-1][:dim]
    return mean.astype(np.float32), (whiten @ vectors[:, order]).astype(np.float32)


class IdentityNetwork(nnx.Module):
    """F: aligned chip -> backbone -> embedding (-> head), and mid-level maps.

    Args:
      backbone: a `dlib_resnet.DlibFaceResNet` or an `arcface.IResNet` (frozen
        by the caller: the trainer never passes it to an optimizer).
      chip_size: the chip side for dlib's network (150 as trained; smaller is
        cheaper); ArcFace always takes 112^2.
      head: an optional `IdentityHead`.
    """

    def __init__(self, backbone: Any, *, chip_size: int = dlib_resnet.CHIP_SIZE,
                 head: IdentityHead | None = None):
        if isinstance(backbone, dlib_resnet.DlibFaceResNet):
            self.alignment, self.chip_size = "dlib", int(chip_size)
        elif isinstance(backbone, arcface.IResNet):
            self.alignment, self.chip_size = "arcface", arcface.INPUT_SIZE
        else:
            raise ValueError(f"identity network: unsupported backbone {type(backbone).__name__} "
                             "(dlib's ResNet or ArcFace's iresnet)")
        self.backbone = backbone
        self.head = head

    def chip_matrices(self, landmarks: jax.Array) -> jax.Array:
        """(B, 68, 2) landmarks, image index coordinates (pixel centres at
        integers) -> (B, 3, 3) float32 image -> chip maps."""
        return align.alignment_matrix(self.alignment, landmarks, self.chip_size)

    def embed_chips(self, chips: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The backbone (and head) on aligned chips (B, c, c, 3) float in [0, 1]:
        the embedding (B, D or K) float32 and the mid-level maps."""
        x = jnp.asarray(chips, jnp.float32)
        if isinstance(self.backbone, dlib_resnet.DlibFaceResNet):
            stages = self.backbone.features(x * 255.0)
            emb = jnp.mean(stages[-1], axis=(1, 2)) @ self.backbone.fc[...]
            maps = dict(zip(dlib_resnet.MID_LEVEL_NAMES, stages))
        else:
            stages = self.backbone.stage_maps(x * 2.0 - 1.0, True)
            emb = self.backbone.embed_map(stages[-1], True)
            maps = {f"stage{n}": stages[n - 1] for n in (1, 2, 3)}
        emb = emb.astype(jnp.float32)
        if self.head is not None:
            emb = self.head(emb)
        return emb, maps

    def maps(self, images: jax.Array, matrices: jax.Array) -> dict[str, jax.Array]:
        """The mid-level maps alone (dlib: levels 4-2, ArcFace: stages 1-3) of
        images (B, H, W, 3) in [0, 1] warped by matrices (B, 3, 3): what the
        perceptual term compares, without the last stages."""
        x = align.warp_images(images, matrices, self.chip_size)
        if isinstance(self.backbone, dlib_resnet.DlibFaceResNet):
            return dlib_resnet.mid_level_features(self.backbone, x * 255.0)
        stages = self.backbone.stage_maps(x * 2.0 - 1.0, True)
        return {f"stage{n}": stages[n - 1] for n in (1, 2, 3)}

    def embed(self, images: jax.Array, matrices: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """F of images (B, H, W, 3) float in [0, 1] warped by matrices (B, 3, 3)
        image -> chip: (embedding, maps), differentiable in the images."""
        return self.embed_chips(align.warp_images(images, matrices, self.chip_size))

    def __call__(self, images: jax.Array, landmarks: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """F of images (B, H, W, 3) float in [0, 1], each aligned by its own
        landmarks (B, 68, 2) (image index coordinates; no gradient flows
        through the alignment: a detector's landmarks would give none)."""
        matrices = jax.lax.stop_gradient(self.chip_matrices(landmarks))
        return self.embed(images, matrices)
