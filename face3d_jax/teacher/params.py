"""The teacher world's fixed random parameters: `TeacherConfig`, the `Teacher`
pytree and `make_teacher` (see world.py for the world itself).

The mapping network and the readouts are drawn on the host with numpy, seeded
by the key, and calibrated on a fixed batch of z: each readout's outputs are
standardised to zero mean and unit variance over that batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from face3d_jax.flame.model import FlameModel
from face3d_jax.flame.uv import FaceRegions, UVBake, bake_uv, face_regions
from face3d_jax.teacher import albedo as ta

SUBSPACES = ("identity", "expression", "pose", "light", "camera", "background")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Sizes, subspaces and ranges of the teacher world.

    resolution: rendered image size (square), up to 1024 and beyond.
    albedo_size / displacement_size: UV map sizes (the paper: 1024 and 256).
    n_latent, style_dim: w is (n_latent, style_dim) (StyleGAN2 at 1024^2: 18, 512).
    mapping_layers: fully connected layers of the mapping (StyleGAN2 uses 8;
      fewer keep a random network's outputs from collapsing together).
    num_shape, num_expression: FLAME coefficients (the paper: 300 and 50).
    *_dims: sizes of the disjoint subspaces of w's dimensions (sum <= style_dim).
    geometry_rows / appearance_rows: [start, stop) rows of w that geometry
      (shape, expression, pose, camera) and appearance (albedo, light,
      background) are read from.
    shape_scale, expression_scale: multiply the shape and expression
      coefficients (expression: mild by default, as FFHQ's faces).
    max_yaw_deg, max_pitch_deg, max_roll_deg: bounds of the head rotation.
    yaw_spread_deg, pitch_spread_deg, roll_spread_deg: its spread (the
      standard deviation of the angle, to first order): FFHQ-like, most faces
      within 15 degrees of frontal, a few turned up to the bound.
    max_jaw_deg: bound of the jaw opening.
    max_displacement: bound of the wrinkle map (metres; DECA and the authors'
      code clip to 0.004, the paper states 0.01).
    camera_scale: weak-perspective scale (NDC per metre) of the mean camera.
    calibration_samples: z drawn at `make_teacher` to standardise readouts.
    """

    resolution: int = 256
    albedo_size: int = 256
    displacement_size: int = 256
    n_latent: int = 18
    style_dim: int = 512
    mapping_layers: int = 4
    num_shape: int = 300
    num_expression: int = 50
    identity_dims: int = 192
    expression_dims: int = 96
    pose_dims: int = 32
    light_dims: int = 32
    camera_dims: int = 16
    background_dims: int = 32
    geometry_rows: tuple[int, int] = (0, 8)
    appearance_rows: tuple[int, int] = (4, 18)
    shape_scale: float = 1.0
    expression_scale: float = 0.5
    max_yaw_deg: float = 45.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 10.0
    yaw_spread_deg: float = 15.0
    pitch_spread_deg: float = 8.0
    roll_spread_deg: float = 4.0
    max_jaw_deg: float = 20.0
    max_displacement: float = 0.004
    camera_scale: float = 6.5
    calibration_samples: int = 2048

    def __post_init__(self):
        dims = sum(getattr(self, f"{name}_dims") for name in SUBSPACES)
        if min(getattr(self, f"{name}_dims") for name in SUBSPACES) < 1 or dims > self.style_dim:
            raise ValueError(f"TeacherConfig: subspace sizes sum to {dims}, expected 1 each and "
                             f"at most style_dim = {self.style_dim}")
        for name in ("geometry_rows", "appearance_rows"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= self.n_latent:
                raise ValueError(f"TeacherConfig: {name} = ({lo}, {hi}) is not a row range "
                                 f"of w with n_latent = {self.n_latent}")
        for name in ("resolution", "albedo_size", "displacement_size"):
            if not 8 <= getattr(self, name) <= 4096:
                raise ValueError(f"TeacherConfig: {name} = {getattr(self, name)}, expected "
                                 f"8..4096")
        if not 0.0 < self.max_yaw_deg <= 90.0:
            raise ValueError(f"TeacherConfig: max_yaw_deg = {self.max_yaw_deg}, expected (0, 90]")


@struct.dataclass
class Teacher:
    """The fixed random parameters of one teacher world (a pytree).

    model: the FLAME-format model it renders.
    mapping: tuple of (W (512, 512), b (512,)) float32 per layer.
    w_mean, w_std: (style_dim,) float32 statistics of w over the calibration
      batch (w_mean is StyleGAN's w_avg, the truncation centre).
    dims: dict subspace name -> (n,) int32 dimensions of w.
    readouts: dict name -> dict of float32 arrays (see `_readout`).
    albedo_bake, displacement_bake: `UVBake`s of the two map sizes.
    regions: the template's `FaceRegions`.
    waves: (bands, K, 3) float32 noise directions of the textures.
    lmk_exprdirs: (51, 3, E) float32 expression basis at the static landmarks.
    skin_vertex: (V,) float32, 1 on the skin, 0 on the eyeballs.
    config: static `TeacherConfig`.
    """

    model: FlameModel
    mapping: Any
    w_mean: Any
    w_std: Any
    dims: Any
    readouts: Any
    albedo_bake: UVBake
    displacement_bake: UVBake
    regions: FaceRegions
    waves: Any
    lmk_exprdirs: Any
    skin_vertex: Any
    config: TeacherConfig = struct.field(pytree_node=False, default=TeacherConfig())


def map_latent(layers, z, xp=jnp):
    """The mapping MLP (`Teacher.mapping`) on z (B, style_dim) float32 ->
    (B, style_dim) float32 w (one row), with jnp or (host side) numpy."""
    x = z / xp.sqrt(xp.mean(z * z, axis=-1, keepdims=True) + 1e-8)  # pixel norm
    for weight, bias in layers:
        x = x @ weight + bias
        x = xp.where(x >= 0, x, 0.2 * x) * np.sqrt(2.0)  # leaky ReLU, gain sqrt(2)
    return x


def _readout(params, c, xp=jnp):
    """Standardised outputs of one readout: a linear map, or a one-hidden-layer
    tanh MLP when the params have 'hidden'."""
    if "hidden" in params:
        c = xp.tanh(c @ params["hidden"] + params["hidden_bias"])
    raw = c @ params["out"]
    return (raw - params["mean"]) / params["std"]


def _readout_sizes(config: TeacherConfig):
    """name -> (subspace, rows, outputs, hidden or None)."""
    geo, app = "geometry_rows", "appearance_rows"
    return {
        "shape": ("identity", geo, config.num_shape, 256),
        "albedo": ("identity", app, ta.NUM_ATTRIBUTES + ta.NOISE_BANDS * ta.WAVES_PER_BAND, 256),
        "expression": ("expression", geo, config.num_expression + 3, None),
        "pose": ("pose", geo, 3, None),
        "light": ("light", app, 12, None),
        "camera": ("camera", geo, 3, None),
        "background": ("background", app, 15, None),
    }


def _coords(teacher: Teacher, w, subspace: str, rows: str):
    """(B, n) standardised coordinates of w's subspace, averaged over rows."""
    lo, hi = getattr(teacher.config, rows)
    idx = teacher.dims[subspace]
    picked = jnp.mean(jnp.take(w[:, lo:hi], idx, axis=2), axis=1)
    return (picked - teacher.w_mean[idx]) / teacher.w_std[idx]


def readout(teacher: Teacher, w, name: str):
    """The standardised readout `name` (see `_readout_sizes`) of w
    (B, n_latent, style_dim) float32: (B, outputs) float32."""
    subspace, rows, _, _ = _readout_sizes(teacher.config)[name]
    return _readout(teacher.readouts[name], _coords(teacher, w, subspace, rows))


def _draw(key, config: TeacherConfig):
    """All random parameters of a world, calibrated (host side, numpy).

    numpy's PCG64 seeded with the key's data draws them: one key, one world,
    and no device program to compile for a one-off precomputation.
    """
    seed = np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist()
    rng = np.random.default_rng(seed)
    dim = config.style_dim
    mapping = tuple((rng.standard_normal((dim, dim)) / np.sqrt(dim),
                     0.2 * rng.standard_normal(dim)) for _ in range(config.mapping_layers))
    perm = rng.permutation(dim)
    dims, start = {}, 0
    for name in SUBSPACES:
        size = getattr(config, f"{name}_dims")
        dims[name] = np.sort(perm[start:start + size]).astype(np.int32)
        start += size
    w_cal = map_latent(mapping, rng.standard_normal((config.calibration_samples, dim)), np)
    w_mean, w_std = w_cal.mean(axis=0), w_cal.std(axis=0) + 1e-6
    readouts = {}
    for name, (subspace, rows, outputs, hidden) in _readout_sizes(config).items():
        n_in = len(dims[subspace])
        params = {}
        if hidden is not None:
            # Gain 1.5: the tanh works in its non-linear range.
            params["hidden"] = 1.5 * rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)
            params["hidden_bias"] = 0.5 * rng.standard_normal(hidden)
            n_in = hidden
        params["out"] = rng.standard_normal((n_in, outputs)) / np.sqrt(n_in)
        params["mean"], params["std"] = np.zeros(outputs), np.ones(outputs)
        # Every row of a mapped w is the same, so the row average is w itself.
        idx = dims[subspace]
        raw = _readout(params, (w_cal[:, idx] - w_mean[idx]) / w_std[idx], np)
        params["mean"], params["std"] = raw.mean(axis=0), raw.std(axis=0) + 1e-6
        readouts[name] = params
    waves = ta.noise_waves(rng)
    as32 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float32), tree)  # noqa: E731
    return as32(mapping), dims, as32(w_mean), as32(w_std), as32(readouts), waves


def make_teacher(key, model: FlameModel, config: TeacherConfig = TeacherConfig()) -> Teacher:
    """Draws a teacher world; the same key, model and config give the same world.

    Args:
      key: a jax PRNG key.
      model: the FLAME-format model (e.g. `face3d_jax.flame.default_model()`);
        it must have at least config.num_shape / num_expression components.
      config: a `TeacherConfig`.
    Returns:
      A `Teacher`.
    """
    if model.num_shape < config.num_shape or model.num_expression < config.num_expression:
        raise ValueError(f"make_teacher: the model has {model.num_shape} shape / "
                         f"{model.num_expression} expression components, the config asks for "
                         f"{config.num_shape} / {config.num_expression}")
    mapping, dims, w_mean, w_std, readouts, waves = _draw(key, config)
    albedo_bake = bake_uv(model, config.albedo_size)
    disp_bake = albedo_bake if config.displacement_size == config.albedo_size \
        else bake_uv(model, config.displacement_size)
    faces = np.asarray(model.faces, np.int64)
    corners = faces[np.asarray(model.static_lmk_faces_idx, np.int64)]  # (51, 3)
    exprdirs = np.asarray(model.exprdirs[..., : config.num_expression], np.float32)
    lmk_exprdirs = np.einsum("lk,lkce->lce", np.asarray(model.static_lmk_bary_coords),
                             exprdirs[corners])
    eye_weight = np.asarray(model.weights)[:, 3:5].sum(axis=1)
    return Teacher(model=model, mapping=mapping, w_mean=w_mean, w_std=w_std, dims=dims,
                   readouts=readouts, albedo_bake=albedo_bake, displacement_bake=disp_bake,
                   regions=face_regions(model), waves=waves,
                   lmk_exprdirs=lmk_exprdirs.astype(np.float32),
                   skin_vertex=(1.0 - np.clip(eye_weight, 0.0, 1.0)).astype(np.float32),
                   config=config)
