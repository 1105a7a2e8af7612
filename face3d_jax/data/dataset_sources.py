"""Image sources of `dataset.generate`: the teacher world and a converted
StyleGAN2, behind one interface, plus dlib detection and diversity sampling.

A source has n_latent, style_dim, resolution and
  mapping(z (B, style_dim) float32) -> w (B, n_latent, style_dim) float32,
  render(w) -> (images (B, R, R, 3) uint8, true landmarks (B, 68, 2) float32
    in image pixels with integer pixel centres as dlib's; NaN for StyleGAN2),
  labels(w, detected landmarks) -> dict of (B,) float32 (LABELS names),
  image_fn() -> a pure, differentiable w -> (B, R, R, 3) float32 image function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.data import boundaries as bd

if TYPE_CHECKING:
    from face3d_jax.data.dataset import GenerateConfig


class _Cache:
    """Compiled functions a source keeps across `generate` calls (keyed by
    the settings they were built for), so a resumed run in the same process
    does not compile again."""

    def cached(self, key, build):
        cache = self.__dict__.setdefault("_compiled", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]


class TeacherSource(_Cache):
    """The teacher world as an image source."""

    def __init__(self, cfg: GenerateConfig, model):
        from face3d_jax import teacher as tt

        self.world = tt.make_teacher(
            jax.random.key(cfg.teacher_seed), model,
            tt.TeacherConfig(resolution=cfg.resolution, albedo_size=cfg.teacher_albedo_size,
                             displacement_size=min(256, cfg.teacher_albedo_size),
                             calibration_samples=cfg.teacher_calibration))
        self.n_latent, self.style_dim = self.world.config.n_latent, self.world.config.style_dim
        self.resolution = cfg.resolution
        world, trunc = self.world, cfg.truncation
        self._map = jax.jit(lambda z: tt.mapping(world, z, trunc))
        self._labels = jax.jit(lambda w: tt.labels(world, w))

        def render(w):
            s = tt.render_scene(world, tt.scene(world, w))
            # The renderer's pixel centres sit at j + 0.5; dlib's at integers.
            return jnp.round(s.image * 255.0).astype(jnp.uint8), s.landmarks2d - 0.5

        self._render = jax.jit(render)

    def mapping(self, z):
        return np.asarray(self._map(jnp.asarray(z)))

    def image_fn(self):
        """A pure function w (B, n_latent, style_dim) -> (B, R, R, 3) float32
        images in [0, 1], differentiable in w (GAN inversion)."""
        from face3d_jax import teacher as tt

        world = self.world
        return lambda w: tt.render_scene(world, tt.scene(world, w)).image

    def render(self, w):
        image, lmk = self._render(jnp.asarray(w))
        return np.asarray(image), np.asarray(lmk, np.float32)

    def labels(self, w, detected):
        del detected
        return {k: np.asarray(v) for k, v in self._labels(jnp.asarray(w)).items()}


class StyleGAN2Source(_Cache):
    """A converted StyleGAN2 folder as an image source (noise: the
    checkpoint's constant buffers, so an image is a function of its w)."""

    def __init__(self, cfg: GenerateConfig):
        from flax import nnx

        from face3d_jax.convert.stylegan2 import load_generator

        g = load_generator(cfg.checkpoint)
        self.n_latent, self.style_dim = g.config.n_latent, g.config.style_dim
        self.resolution = g.config.resolution
        graphdef, state = nnx.split(g)
        n, trunc = self.n_latent, cfg.truncation

        def mapping(state, z):
            gen = nnx.merge(graphdef, state)
            w = gen.mapping(z)
            w = gen.latent_avg[...] + trunc * (w - gen.latent_avg[...])
            return jnp.broadcast_to(w[:, None], (w.shape[0], n, w.shape[1]))

        def render(state, w):
            x = nnx.merge(graphdef, state).synthesis(w, noise_mode="const")
            return jnp.clip(jnp.round((x[..., :3] + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

        self._state, self._graphdef = state, graphdef
        self._map, self._render = jax.jit(mapping), jax.jit(render)

    def image_fn(self):
        """A pure function w (B, n_latent, style_dim) -> (B, R, R, 3) float32
        images, (x + 1) / 2 of the generator with its constant noise, not
        clipped (clipping would stop the gradient), differentiable in w."""
        from flax import nnx

        graphdef, state = self._graphdef, self._state
        return lambda w: (nnx.merge(graphdef, state).synthesis(
            w, noise_mode="const")[..., :3] + 1.0) * 0.5

    def mapping(self, z):
        return np.asarray(self._map(self._state, jnp.asarray(z)))

    def render(self, w):
        image = np.asarray(self._render(self._state, jnp.asarray(w)))
        return image, np.full((len(image), 68, 2), np.nan, np.float32)

    def labels(self, w, detected):
        del w
        return bd.landmark_labels(detected)


def farthest_points(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows of x (M, D) by greedy farthest-point sampling from row 0."""
    chosen = [0]
    dist = np.linalg.norm(x - x[0], axis=1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(x - x[chosen[-1]], axis=1))
    return np.asarray(chosen)


def detect_landmarks(tools, images: np.ndarray) -> np.ndarray:
    """(B, 68, 2) float32 dlib landmarks of the largest face; NaN where none."""
    out = np.full((len(images), 68, 2), np.nan, np.float32)
    for i, image in enumerate(images):
        faces = tools.detect(image)
        if faces:
            out[i] = faces[0].landmarks
    return out
