"""MICA's shape regressor (Zielon et al. 2022, MICA [61] of the paper), in Flax NNX.

The paper's E_shape is "an ArcFace backbone initialized to the weights learned
by [61]" (Sec. 5.2), and the authors' code takes the shape code from MICA's
two parts: the ArcFace iresnet100 (`nets.arcface.IResNet`, its 512-d
embedding) and this MLP, which maps the L2-normalised embedding to FLAME's
shape coefficients. MICA trained both on 3D scans of about 2300 subjects;
this is where a supervised shape prior enters the paper's pipeline.

    mapping = MicaMapping(MicaConfig(out_dim=300), rngs=nnx.Rngs(0))
    shape = mapping(normalize(arcface_embedding))     # (B, 512) -> (B, 300) float32

Architecture (MICA's `MappingNetwork`, models/generator.py; MICA's config:
hidden width 300, `mapping_layers` 3): Linear(z, h) and then `layers` more
Linear(h, h), each followed by leaky ReLU with slope 0.2; with more than 5
layers, after the one at index layers // 2 the input z is concatenated in
front of the activations ([z, h]) and the next layer takes h + z; last a
Linear(h, out) with no activation. Weights are stored (in, out), torch's
transposed.

Initialisation without MICA's weights: the hidden layers as MICA initialises
them (Kaiming normal for leaky ReLU 0.2, fan in; biases uniform in
+-1/sqrt(fan_in), torch's Linear default); the output layer starts at zero, so
an untrained E_shape predicts the mean shape as the rest of E_shape's zero
head does (MICA scales a default-initialised output by 0.25 because it trains
from scratch under 3D supervision; we start self-supervised training instead).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

LEAKY_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class MicaConfig:
    """z_dim: the embedding size (512); hidden_dim: MICA's 300; out_dim: the
    shape coefficients (MICA's 300); layers: Linear(h, h) layers after the first
    (MICA's `mapping_layers`, 3)."""

    z_dim: int = 512
    hidden_dim: int = 300
    out_dim: int = 300
    layers: int = 3

    @property
    def skips(self) -> tuple[int, ...]:
        """Indices of the layers after which z is concatenated (MICA: layers > 5)."""
        return (self.layers // 2,) if self.layers > 5 else ()


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MicaMapping(nnx.Module):
    """MICA's mapping network: (B, z_dim) float32 -> (B, out_dim) float32."""

    def __init__(self, config: MicaConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        if min(c.z_dim, c.hidden_dim, c.out_dim) < 1 or c.layers < 0:
            raise ValueError(f"MicaConfig needs positive sizes and layers >= 0, got {c}")
        kaiming = nnx.initializers.variance_scaling(2.0 / (1.0 + LEAKY_SLOPE ** 2), "fan_in",
                                                    "normal")
        layers = []
        for i in range(c.layers + 1):
            fan_in = c.z_dim if i == 0 else c.hidden_dim + (c.z_dim if i - 1 in c.skips else 0)
            layers.append(nnx.Linear(fan_in, c.hidden_dim, kernel_init=kaiming,
                                     bias_init=_torch_bias_init(fan_in), rngs=rngs))
        self.network = nnx.List(layers)
        self.output = nnx.Linear(c.hidden_dim, c.out_dim, kernel_init=nnx.initializers.zeros,
                                 bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        z = jnp.asarray(z, jnp.float32)
        if z.ndim != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"MicaMapping expects (B, {self.config.z_dim}), got {tuple(z.shape)}")
        h = z
        for i, layer in enumerate(self.network):
            h = jax.nn.leaky_relu(layer(h), LEAKY_SLOPE)
            if i in self.config.skips:
                h = jnp.concatenate([z, h], axis=-1)
        return self.output(h)


def normalize(embedding: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize: x / max(||x||, eps) along the last axis,
    how MICA feeds ArcFace's embedding to the mapping. (B, D) -> (B, D) float32."""
    x = jnp.asarray(embedding, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
