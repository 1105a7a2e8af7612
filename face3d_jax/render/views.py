"""Rendering one face from several head yaws (the paper's Table 4 protocol:
identity across poses at 0, +-15, +-30 and +-45 degrees) and the defaults that
make a presentable picture of the procedural model without any assets."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.spatial.transform import Rotation

from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.model import FlameModel
from face3d_jax.render.renderer import RenderOutput, WeakPerspectiveCamera, render

TABLE4_YAWS = (0.0, 15.0, -15.0, 30.0, -30.0, 45.0, -45.0)
# A plain skin tone: the albedo until AlbedoGAN (or the teacher world) supplies one.
PLAIN_SKIN = (0.80, 0.60, 0.50)


def default_sh_light(batch: int) -> jnp.ndarray:
    """(B, 9, 3) SH coefficients: soft ambient light plus a key light from the
    front and slightly above (DECA's convention and constants)."""
    sh = np.zeros((9, 3), np.float32)
    sh[0] = 2.6   # ambient: 2.6 / sqrt(4 pi) ~ 0.73
    sh[3] = 0.35  # +z: from the camera's side
    sh[2] = 0.15  # +y: from above
    return jnp.broadcast_to(jnp.asarray(sh), (batch, 9, 3))


def face_camera(batch: int, scale: float = 7.0, ty: float = -0.01) -> WeakPerspectiveCamera:
    """A weak-perspective camera framing a FLAME head from chin to crown."""
    cam = jnp.broadcast_to(jnp.asarray([scale, 0.0, ty], jnp.float32), (batch, 3))
    return WeakPerspectiveCamera(cam=cam)


def plain_albedo(batch: int, size: int = 64) -> jnp.ndarray:
    """(B, size, size, 3) uniform skin-coloured UV albedo."""
    return jnp.broadcast_to(jnp.asarray(PLAIN_SKIN, jnp.float32), (batch, size, size, 3))


def render_yaws(model: FlameModel, params: dict, albedo_map, sh_coeffs=None,
                yaws_deg=TABLE4_YAWS, resolution=(512, 512), camera_scale: float = 7.0,
                backend: str = "jax") -> RenderOutput:
    """Renders each face of `params` turned by each yaw.

    The yaw is composed with the face's own global pose (R_yaw @ R_global), so
    FLAME's yaw-dependent jaw contour follows the turn.

    Args:
      model: the face model.
      params: FLAME parameters for `flame_forward`, batch B.
      albedo_map: (B, Ht, Wt, 3) UV albedo.
      sh_coeffs: (B, 9, 3) SH light, `default_sh_light` if None.
      yaws_deg: Y yaw angles in degrees (positive turns the face to its left,
        the viewer's right).
      resolution: (H, W).
    Returns:
      A `RenderOutput` of batch Y * B, yaw-major (all faces at the first yaw,
      then the next), with the 68 landmarks projected.
    """
    batch = params["shape"].shape[0]
    yaws = jnp.deg2rad(jnp.asarray(yaws_deg, jnp.float32))
    num_yaws = yaws.shape[0]
    turn = Rotation.from_rotvec(jnp.stack([0 * yaws, yaws, 0 * yaws], axis=-1))
    tiled = {k: jnp.tile(jnp.asarray(v), (num_yaws, 1)) for k, v in params.items()}
    own = Rotation.from_rotvec(tiled["global_pose"])
    per_view = Rotation.from_rotvec(jnp.repeat(turn.as_rotvec(), batch, axis=0))
    tiled["global_pose"] = (per_view * own).as_rotvec().astype(jnp.float32)
    out = flame_forward(model, **tiled)
    total = num_yaws * batch
    if sh_coeffs is None:
        sh_coeffs = default_sh_light(batch)
    return render(out.vertices, model.faces, model.uv_coords, model.uv_faces,
                  jnp.tile(albedo_map, (num_yaws, 1, 1, 1)), face_camera(total, camera_scale),
                  tuple(resolution), sh_coeffs=jnp.tile(sh_coeffs, (num_yaws, 1, 1)),
                  landmarks=out.landmarks, backend=backend)


def write_yaw_renders(out_dir, yaws=TABLE4_YAWS, resolution: int = 512, seed=None,
                      model_path=None, params=None, albedo=None) -> list:
    """Renders one face at each yaw and writes yaw_<deg>.png under `out_dir`.

    The face is the mean face, or a random one (`seed`, as `face3d demo`
    samples), or `params`; its albedo `albedo` ((1, T, T, 3) float32 UV map)
    or a plain skin tone, under `default_sh_light`. Returns the written paths.
    """
    from pathlib import Path

    import jax
    from PIL import Image

    from face3d_jax.flame import default_model, load, sample_parameters

    model = load(model_path) if model_path else default_model()
    if params is None:
        if seed is None:
            params = {k: np.zeros((1, n), np.float32) for k, n in (
                ("shape", 300), ("expression", 50), ("global_pose", 3), ("neck_pose", 3),
                ("jaw_pose", 3), ("eye_pose", 6))}
        else:
            params = sample_parameters(jax.random.key(seed), 1)
            params["global_pose"] = np.zeros_like(params["global_pose"])
        params["shape"] = params["shape"][:, : model.num_shape]
        params["expression"] = params["expression"][:, : model.num_expression]
    # One compiled program instead of op-by-op dispatch (several times faster).
    draw = jax.jit(lambda m, p, a: render_yaws(m, p, a, yaws_deg=tuple(yaws),
                                               resolution=(resolution, resolution)))
    out = draw(model, params, plain_albedo(1) if albedo is None else jnp.asarray(albedo))
    images = np.asarray(out.image)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for yaw, image in zip(yaws, images):
        path = folder / f"yaw_{yaw:+04.0f}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
        written.append(path)
    return written
