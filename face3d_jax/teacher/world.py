"""The synthetic teacher world: a stand-in for the pretrained StyleGAN2 whose
every image has a known 3D truth (docs/architecture.md, "The procedural
default and the teacher world").

    teacher = make_teacher(jax.random.key(0), default_model(), TeacherConfig())  # params.py
    w, scene_, sample_ = sample(teacher, jax.random.key(1), batch=4)
    sample_.image            # (4, H, W, 3) what G_StlGAN would have drawn
    scene_.shape, sample_.vertices, scene_.albedo   # the truth, for evaluation

A fixed random, non-linear map z (512) -> w (18 x 512) -> scene -> image:
  - `mapping`: StyleGAN2's mapping network in miniature (pixel norm, then fully
    connected layers with leaky ReLU and gain sqrt(2); Karras et al. 2020), with
    random weights, broadcast to the n_latent rows of w; truncation towards the
    mean w as in StyleGAN.
  - `scene`: fixed random readouts of w into FLAME parameters (300 shape, 50
    expression, head pose within +-45 degrees of yaw, jaw, gaze), a procedural
    UV albedo and wrinkle displacement (teacher/albedo.py), SH light, a weak-
    perspective camera and a background.
  - `render_scene`: FLAME, the displacement along the normals (Sec. 4.2), and
    our renderer with detail normals; the truth is recorded beside the image.

Disentanglement, by construction. The 512 dimensions of w are split by a fixed
random permutation into disjoint sets: identity, expression, pose, light,
camera, background (the rest carry nothing, like the many directions of
StyleGAN's W that change no attribute of interest). Each readout reads only its
set, so an edit w + alpha n (Sec. 5.1; n in R^512, added to every row) with n
zero on the identity set leaves shape and albedo bit-identical, while the
expression and pose follow. `attribute_direction` gives the true n of each
label, and `labels` the attribute values for learning InterFaceGAN boundaries.
As in StyleGAN, the rows of w have roles: geometry (shape, expression, pose,
camera) is read from the coarse rows and appearance (albedo, light,
background) from the fine ones, so style mixing mixes them.

Each readout's outputs are standardised (zero mean, unit variance) over a fixed
calibration batch of z drawn at `make_teacher`, then mapped to physical ranges
(FLAME coefficients ~ N(0, 1) like its PCA-normalised bases; angles bounded by
tanh, so |yaw| < max_yaw_deg always).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from face3d_jax.flame.forward import flame_forward
from face3d_jax.flame.geometry import displace, vertex_normals
from face3d_jax.flame.lbs import axis_angle_to_matrix
from face3d_jax.flame.uv import detail_normal_map
from face3d_jax.render.renderer import WeakPerspectiveCamera, render
from face3d_jax.teacher import albedo as ta
from face3d_jax.teacher.params import Teacher, map_latent, readout
from face3d_jax.teacher.scene import TeacherSample, TeacherScene, background_image, sh_light

__all__ = ["LABELS", "attribute_direction", "labels", "mapping", "render_scene", "sample", "scene"]

LABELS = ("yaw", "pitch", "roll", "jaw_open", "smile", "brow_raise")
# iBUG landmarks (static index = iBUG - 17) measuring the expression labels.
_MOUTH_CORNERS, _LIP_CENTRES = (48 - 17, 54 - 17), (51 - 17, 57 - 17)
_BROWS, _NOSE_BRIDGE = tuple(range(0, 10)), 27 - 17
_MAIN_EXPRESSIONS = 16  # the procedural bases' designed expressions


def mapping(teacher: Teacher, z, truncation: float = 1.0):
    """z -> w, as StyleGAN2's mapping network, broadcast to every row.

    Args:
      teacher: the world.
      z: (B, style_dim) float32 latent codes (~ N(0, I)).
      truncation: psi; w = w_avg + psi (w - w_avg) (1: none; the authors
        sample with 0.5).
    Returns:
      (B, n_latent, style_dim) float32.
    """
    w = map_latent(teacher.mapping, jnp.asarray(z, jnp.float32))
    w = teacher.w_mean + truncation * (w - teacher.w_mean)
    return jnp.broadcast_to(w[:, None], (w.shape[0], teacher.config.n_latent, w.shape[1]))


def _geometry_controls(teacher: Teacher, w):
    """Expression, jaw, gaze and head rotation of w: a dict of (B, ...) arrays."""
    cfg = teacher.config
    ex = readout(teacher, w, "expression")
    num = cfg.num_expression
    pose = readout(teacher, w, "pose")
    # Bounded by max_*, spread (the standard deviation near 0) by *_spread.
    yaw = cfg.max_yaw_deg * jnp.tanh(cfg.yaw_spread_deg / cfg.max_yaw_deg * pose[:, 0])
    pitch = cfg.max_pitch_deg * jnp.tanh(cfg.pitch_spread_deg / cfg.max_pitch_deg * pose[:, 1])
    roll = cfg.max_roll_deg * jnp.tanh(cfg.roll_spread_deg / cfg.max_roll_deg * pose[:, 2])
    # Mostly closed, sometimes open (1 in 6 beyond a quarter of max_jaw_deg).
    jaw = cfg.max_jaw_deg * jax.nn.sigmoid(2.0 * ex[:, num] - 4.0)
    # Mostly mild, as FFHQ's faces: the main actions (the procedural bases'
    # designed ones, smile, brows..., or FLAME's first components) at
    # expression_scale, the rest at a third of it, and the first ("mouth
    # open" in both) only ever opening, and rarely.
    weight = jnp.where(jnp.arange(num) < _MAIN_EXPRESSIONS, 1.0, 0.35)
    expression = cfg.expression_scale * weight * ex[:, :num]
    expression = expression.at[:, 0].set(
        cfg.expression_scale * 2.0 * jax.nn.sigmoid(2.0 * ex[:, 0] - 4.0))
    lift = 1000.0 * jnp.einsum("lce,be->blc", teacher.lmk_exprdirs, expression)[..., 1]  # mm
    smile = jnp.mean(lift[:, list(_MOUTH_CORNERS)], 1) - jnp.mean(lift[:, list(_LIP_CENTRES)], 1)
    brow_raise = jnp.mean(lift[:, list(_BROWS)], 1) - lift[:, _NOSE_BRIDGE]
    gaze = jnp.stack([0.12 * jnp.tanh(ex[:, num + 1]), 0.2 * jnp.tanh(ex[:, num + 2])], -1)
    return dict(expression=expression, yaw=yaw, pitch=pitch, roll=roll, jaw_open=jaw,
                smile=smile, brow_raise=brow_raise, gaze=gaze)


def _yaw_pitch_roll_to_rotvec(yaw, pitch, roll):
    """(B, 3) float32 axis-angle of R = R_y(yaw) R_x(pitch) R_z(roll) (intrinsic
    y-x-z: turn, then nod, then tilt in the turned frame), angles (B,) in
    degrees; through the quaternion q_y q_x q_z."""
    half = [jnp.deg2rad(a) / 2.0 for a in (yaw, pitch, roll)]
    (cy, sy), (cx, sx), (cz, sz) = [(jnp.cos(h), jnp.sin(h)) for h in half]
    # q_y q_x = (cy cx, cy sx, sy cx, -sy sx) as (w, x, y, z); then times q_z.
    w0, x0, y0, z0 = cy * cx, cy * sx, sy * cx, -sy * sx
    quat_w = w0 * cz - z0 * sz
    vec = jnp.stack([x0 * cz + y0 * sz, y0 * cz - x0 * sz, z0 * cz + w0 * sz], -1)
    norm = jnp.linalg.norm(vec, axis=-1, keepdims=True)
    angle = 2.0 * jnp.arctan2(norm, quat_w[:, None])
    # angle / sin(angle / 2) -> 2 as the rotation vanishes.
    scale = jnp.where(norm > 1e-7, angle / jnp.maximum(norm, 1e-7), 2.0)
    return (scale * vec).astype(jnp.float32)


def labels(teacher: Teacher, w) -> dict:
    """The attribute labels the teacher knows (for Sec. 5.1's boundaries).

    Args:
      teacher: the world; w: (B, n_latent, style_dim) float32.
    Returns:
      dict of (B,) float32: yaw, pitch, roll (degrees; yaw > 0 turns the face
      to its left, pitch > 0 tilts it down, roll about the view axis),
      jaw_open (degrees), smile (mm the mouth corners rise relative to the lip
      centres, from the expression) and brow_raise (mm the brows rise relative
      to the nose bridge).
    """
    g = _geometry_controls(teacher, w)
    return {name: g[name].astype(jnp.float32) for name in LABELS}


def attribute_direction(teacher: Teacher, name: str):
    """The unit direction n in R^style_dim that increases label `name`.

    Exact for this world: the gradient of the label at w_avg (the expression
    labels are linear in w's expression subspace; the angles are monotone in
    one linear form of the pose subspace). Zero outside the label's subspace,
    so w + alpha n keeps the identity bit for bit.

    Returns:
      (style_dim,) float32.
    """
    if name not in LABELS:
        raise ValueError(f"attribute_direction: unknown label '{name}', expected one of {LABELS}")
    cfg = teacher.config

    def value(w_row):
        w = jnp.broadcast_to(w_row, (1, cfg.n_latent, cfg.style_dim))
        return labels(teacher, w)[name][0]

    grad = jax.grad(value)(jnp.asarray(teacher.w_mean))
    return grad / jnp.linalg.norm(grad)


def scene(teacher: Teacher, w) -> TeacherScene:
    """Reads a scene out of w.

    Args:
      teacher: the world; w: (B, n_latent, style_dim) float32.
    Returns:
      A `TeacherScene` (see teacher/scene.py for the fields' shapes).
    """
    cfg = teacher.config
    g = _geometry_controls(teacher, w)
    batch = w.shape[0]
    shape = cfg.shape_scale * readout(teacher, w, "shape")
    albedo_out = readout(teacher, w, "albedo")
    attributes = albedo_out[:, : ta.NUM_ATTRIBUTES]
    phases = 2.0 * jnp.pi * albedo_out[:, ta.NUM_ATTRIBUTES:].reshape(
        batch, ta.NOISE_BANDS, ta.WAVES_PER_BAND)
    albedo = ta.albedo_map(teacher.albedo_bake, teacher.regions, teacher.waves, attributes, phases)
    displacement = ta.wrinkle_map(teacher.displacement_bake, teacher.regions, teacher.waves,
                                  attributes, phases, g["brow_raise"], g["smile"],
                                  cfg.max_displacement)
    global_pose = _yaw_pitch_roll_to_rotvec(g["yaw"], g["pitch"], g["roll"])
    zero = jnp.zeros((batch,), jnp.float32)
    jaw_pose = jnp.stack([jnp.deg2rad(g["jaw_open"]), zero, zero], -1)
    eye = jnp.stack([g["gaze"][:, 0], g["gaze"][:, 1], zero], -1)
    # Like FFHQ's alignment, the camera frames the face: the template's
    # landmark centroid, turned with the head about the root joint, lands a
    # little below the image centre (NDC y = 0.12, leaving room for the
    # crown), with jitter.
    regions = teacher.regions
    turned = jnp.einsum("bij,j->bi", axis_angle_to_matrix(global_pose),
                        jnp.mean(regions.landmarks, axis=0) - regions.root) + regions.root
    cam = readout(teacher, w, "camera")
    scale = cfg.camera_scale * (1.0 + 0.06 * jnp.tanh(cam[:, 0]))
    camera = jnp.stack([scale, -turned[:, 0] + 0.006 * jnp.tanh(cam[:, 1]),
                        -turned[:, 1] - 0.12 / scale + 0.006 * jnp.tanh(cam[:, 2])], -1)
    return TeacherScene(
        shape=shape.astype(jnp.float32), expression=g["expression"].astype(jnp.float32),
        global_pose=global_pose, neck_pose=jnp.zeros((batch, 3), jnp.float32),
        jaw_pose=jaw_pose.astype(jnp.float32),
        eye_pose=jnp.concatenate([eye, eye], -1).astype(jnp.float32),
        albedo=albedo, displacement=displacement,
        light=sh_light(readout(teacher, w, "light")),
        camera=camera.astype(jnp.float32),
        background=background_image(readout(teacher, w, "background"), cfg.resolution))


def render_scene(teacher: Teacher, scene_: TeacherScene, backend: str = "jax") -> TeacherSample:
    """Renders a scene and records its truth.

    The detailed mesh is M' = M_c + D n (Sec. 4.2) on the skin; the renderer
    shades the detail normals of that surface. The image is clipped to [0, 1].

    Args:
      teacher: the world; scene_: a `TeacherScene` of batch B.
      backend: the rasterizer backend.
    Returns:
      A `TeacherSample` at the scene's background resolution.
    """
    model = teacher.model
    out = flame_forward(model, **scene_.flame_params())
    normals = vertex_normals(out.vertices, model.faces)
    detailed = displace(out.vertices, model.faces, model.vertex_uv, scene_.displacement,
                        mask=teacher.skin_vertex)
    normal_map = detail_normal_map(teacher.displacement_bake, model.faces, out.vertices, normals,
                                   scene_.displacement)
    resolution = scene_.background.shape[1:3]
    r = render(detailed, model.faces, model.uv_coords, model.uv_faces, scene_.albedo,
               WeakPerspectiveCamera(cam=scene_.camera), resolution, sh_coeffs=scene_.light,
               normal_map=normal_map, landmarks=out.landmarks, background=scene_.background,
               backend=backend)
    return TeacherSample(image=jnp.clip(r.image, 0.0, 1.0), mask=r.mask, vertices=detailed,
                         coarse_vertices=out.vertices, landmarks3d=out.landmarks,
                         landmarks2d=r.landmarks2d, albedo=r.albedo, shading=r.shading,
                         normals=r.normals)


def sample(teacher: Teacher, key, batch: int, truncation: float = 1.0):
    """Draws z ~ N(0, I) and renders it: (w, scene, sample).

    Args:
      teacher: the world; key: a PRNG key; batch: B (static).
      truncation: psi of `mapping`.
    Returns:
      w (B, n_latent, style_dim) float32, a `TeacherScene`, a `TeacherSample`.
    """
    z = jax.random.normal(key, (batch, teacher.config.style_dim), jnp.float32)
    w = mapping(teacher, z, truncation)
    scene_ = scene(teacher, w)
    return w, scene_, render_scene(teacher, scene_)
