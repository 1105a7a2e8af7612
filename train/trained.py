"""A finished (or running) run loaded for use: w or z -> a textured, detailed
3D face. `face3d generate` and `face3d edit` build on it.

    run = load_run("runs/tiny")                     # the last checkpoint
    w = run.w_from_seeds([0, 1, 2])                 # z through the source's mapping
    face = run.faces(w)                             # a Faces of numpy arrays

A face is made as the trainer makes it (`step.context`, with the generators'
constant noise): the run's image source (the teacher world or the converted
StyleGAN2 the dataset was made with) draws the image of w, which is cropped as
the dataset crops it (DECA's crop around the teacher's true landmarks, or
dlib's where the dataset detected them); E_shape reads the crop (FLAME
shape, expression, pose, camera, light), G_Disp draws the displacement map
and G_Ab's EMA the UV albedo from w.

Why in face3d_train rather than face3d_jax: the networks of a run (E_shape's
layout, G_Ab over the mean, the code decoding) and the checkpoint's tree are
defined by the trainer (`models.py`, `state.py`), and face3d_jax never imports
face3d_train.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from face3d_jax.flame import displace, flame_forward
from face3d_jax.render.renderer import WeakPerspectiveCamera, render
from face3d_jax.render.views import default_sh_light
from face3d_train.checkpoint import Checkpointer
from face3d_train.models import albedo_map, decode_codes, displacement_map

PAPER_YAWS = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)  # Fig. 5's views, degrees


@dataclasses.dataclass
class Faces:
    """A batch of B generated faces (numpy arrays).

    w: (B, L, 512) float32 latents.
    image: (B, R, R, 3) uint8, the image source's picture of w.
    crop: (B, c, c, 3) float32 in [0, 1], what E_shape read.
    codes: {shape (B, S), expression (B, E), global_pose (B, 3), jaw_pose
      (B, 3) axis-angle, camera (B, 3) weak perspective (s, tx, ty),
      light (B, 9, 3) SH} float32.
    coarse: (B, V, 3) float32 FLAME mesh (metres) at the predicted expression
      and pose; detailed: the same moved along its normals by the displacement.
    canonical: (B, V, 3) float32, the detailed mesh with the head turned to
      face +z (global pose 0; expression and jaw kept): what the exports and
      `TrainedModel.views` show.
    albedo: (B, Ta, Ta, 3) float32 in [0, 1], row 0 at v = 1.
    displacement: (B, Td, Td, 1) float32 metres.
    render: (B, c, c, 3) float32 in [0, 1], the detailed mesh with the albedo
      and predicted light over the crop, as the trainer renders it.
    """

    w: np.ndarray
    image: np.ndarray
    crop: np.ndarray
    codes: dict
    coarse: np.ndarray
    detailed: np.ndarray
    canonical: np.ndarray
    albedo: np.ndarray
    displacement: np.ndarray
    render: np.ndarray

    def __len__(self) -> int:
        return int(self.w.shape[0])

    def take(self, index) -> Faces:
        """The faces at `index` (an int, slice or index array), still batched."""
        idx = np.atleast_1d(np.arange(len(self))[index])
        return Faces(**{f.name: ({k: v[idx] for k, v in getattr(self, f.name).items()}
                                 if f.name == "codes" else getattr(self, f.name)[idx])
                        for f in dataclasses.fields(self)})


def _run_error(path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def read_run_config(workdir) -> ml_collections.ConfigDict:
    """The config a run was trained with (`WORKDIR/config.json`).

    Raises:
      FileNotFoundError: no workdir, or no config.json in it (not a run).
      ValueError: config.json unreadable or not a training config.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no such run folder")
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a `face3d train` workdir")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _run_error(path, f"unreadable ({err})") from None
    needed = ("model", "data", "schedule", "checkpoint")
    if not isinstance(data, dict) or any(k not in data for k in needed):
        raise _run_error(path, "not a training config (it needs the sections "
                         + ", ".join(needed) + ")")
    return ml_collections.ConfigDict(data)


class TrainedModel:
    """The generator side of a run: E_shape, G_Disp, G_Ab's EMA, the FLAME
    model and the run's image source. Build it with `load_run`.

    Attributes:
      config: the run's ConfigDict as trained (F's and VGG16's weight paths
        included, though loading does not read them); step: the checkpoint's step; workdir;
      max_displacement: G_Disp's range (metres);
      model: the FLAME model (faces (F, 3), uv_coords (T, 2), uv_faces (F, 3)).
      source: the image source (`face3d_jax.data.dataset_sources`).
    """

    def __init__(self, config, model, setup, state, step: int, source, workdir):
        self.config, self.model, self.step, self.source = config, model, int(step), source
        self.workdir = Path(workdir)
        self.crop_size = int(config.data.generate.crop_size)
        self.landmark_mode = _generate_config(config).landmark_mode
        gr, b = setup.graphs, state.buffers
        encoder = nnx.merge(gr["encoder"], state.shape.params["encoder"], b["encoder"])
        disp = nnx.merge(gr["displacement"], state.shape.params["displacement"],
                         b["displacement"])
        albedo = nnx.merge(gr["albedo"], state.albedo.g_ema, b["albedo"])
        layout, prior = setup.layout, jnp.asarray(setup.camera_prior)
        max_disp = self.max_displacement = float(setup.max_displacement)
        size = int(config.model.render_size)
        self.render_size = size
        self._tools = None

        def decode(crop, w):
            codes = decode_codes(encoder(crop), layout, prior)
            zeros = jnp.zeros((crop.shape[0], 3), jnp.float32)
            out = flame_forward(model, codes["shape"], codes["expression"], codes["global_pose"],
                                zeros, codes["jaw_pose"], jnp.zeros((crop.shape[0], 6)))
            dmap = displacement_map(disp, w, max_disp)
            detailed = displace(out.vertices, model.faces, model.vertex_uv, dmap)
            front = flame_forward(model, codes["shape"], codes["expression"], zeros, zeros,
                                  codes["jaw_pose"], jnp.zeros((crop.shape[0], 6)))
            canonical = displace(front.vertices, model.faces, model.vertex_uv, dmap)
            alb = albedo_map(albedo, w)
            r = render(detailed, model.faces, model.uv_coords, model.uv_faces, alb,
                       WeakPerspectiveCamera(cam=codes["camera"]), (size, size),
                       sh_coeffs=codes["light"], background=crop)
            return dict(codes=codes, coarse=out.vertices, detailed=detailed,
                        canonical=canonical, albedo=alb,
                        displacement=dmap, render=r.image)

        self._decode = jax.jit(decode)
        self._codes = jax.jit(lambda crop: decode_codes(encoder(crop), layout, prior))
        self._views = jax.jit(self._view_fn, static_argnames=("size",))

    @property
    def boundary_folder(self) -> Path:
        """Where the run's dataset builder keeps its InterFaceGAN boundaries."""
        gen = self.config.data.generate
        if gen.get("boundaries"):
            return Path(gen.boundaries)
        data = self.config.data.dataset_dir or self.workdir / "data"
        return Path(data) / "work" / "boundaries"

    # -- latents -----------------------------------------------------------

    @property
    def n_latent(self) -> int:
        return int(self.source.n_latent)

    @property
    def style_dim(self) -> int:
        return int(self.source.style_dim)

    def w_from_z(self, z) -> np.ndarray:
        """z (B, 512) float -> w (B, L, 512) float32 through the source's
        mapping, with the run's truncation (`data.generate.truncation`, or the
        one `load_run` was given)."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z of shape {z.shape}: expected (B, {self.style_dim})")
        return np.asarray(self.source.mapping(z), np.float32)

    def w_from_seeds(self, seeds) -> np.ndarray:
        """One z ~ N(0, I) per seed (`jax.random.key(seed)`), mapped: (B, L, 512)."""
        z = [np.asarray(jax.random.normal(jax.random.key(int(s)), (self.style_dim,)))
             for s in seeds]
        return self.w_from_z(np.stack(z))

    def check_w(self, w) -> np.ndarray:
        """w as (B, L, 512) float32: (B, 512) or (512,) is broadcast over the L
        rows (InterFaceGAN's and a projector's w); else a ValueError."""
        w = given = np.asarray(w, np.float32)
        if w.ndim == 1:
            w = w[None]
        if w.ndim == 2:
            w = np.broadcast_to(w[:, None], (w.shape[0], self.n_latent, w.shape[1]))
        if w.ndim != 3 or w.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"w of shape {given.shape}: expected (B, {self.n_latent}, "
                             f"{self.style_dim}), (B, {self.style_dim}) or ({self.style_dim},)")
        if not np.isfinite(w).all():
            raise ValueError("w holds NaN or infinite values")
        return np.ascontiguousarray(w)

    # -- faces -------------------------------------------------------------

    def _landmarks(self, images, truth, mode=None):
        if (mode or self.landmark_mode) == "truth":
            return truth
        from face3d_jax.data.dataset_sources import detect_landmarks
        from face3d_jax.faces.detect import FaceTools

        if self._tools is None:
            self._tools = FaceTools.load()
        return detect_landmarks(self._tools, images)

    def faces(self, w, batch: int = 8) -> Faces:
        """The 3D faces of w ((B, L, 512), (B, 512) or (512,) float).

        Raises ValueError when the source image of a w shows no face that
        dlib finds (a StyleGAN2 source; the teacher's landmarks are true)."""
        w = self.check_w(w)
        parts = []
        for start in range(0, len(w), batch):
            wb = w[start:start + batch]
            real = len(wb)
            wb = _pad(wb, batch)  # the source renders one compiled shape too
            images, truth = self.source.render(wb)
            lmk = self._landmarks(images, truth)
            missing = np.flatnonzero(~np.isfinite(lmk[:real]).all(axis=(1, 2)))
            if len(missing):
                raise ValueError(f"no face found in the source image of w[{start + missing[0]}]")
            crop = self.crops(images[:real], lmk[:real])
            parts.append(self.faces_from_crops(crop, wb[:real], images[:real], batch))
        return _concat(parts)

    def detect(self, images) -> np.ndarray:
        """dlib's 68 landmarks of the largest face in each of B images ((H, W,
        3) uint8, sizes may differ): (B, 68, 2) float32 pixels, NaN where no
        face is found."""
        return self._landmarks([np.asarray(im) for im in images], None, mode="detected")

    def crops(self, images, landmarks) -> np.ndarray:
        """DECA's crops of images (B, H, W, 3) uint8 around landmarks (B, 68,
        2) (pixels, dlib's convention): (B, c, c, 3) float32 in [0, 1],
        rounded to uint8 levels as the dataset stores them, so that E_shape
        reads what it was trained on."""
        from face3d_jax.faces.crop import crop_matrix, warp_crop

        mats = np.stack([crop_matrix(p, self.crop_size) for p in landmarks]).astype(np.float32)
        crop = jax.vmap(lambda im, m: warp_crop(im, m, self.crop_size))(
            jnp.asarray(images), jnp.asarray(mats)) / 255.0
        return np.asarray(jnp.round(jnp.clip(crop, 0.0, 1.0) * 255.0) / 255.0, np.float32)

    def codes(self, crop, batch: int = 8) -> dict[str, np.ndarray]:
        """E_shape's codes of crops (B, c, c, 3) float32 in [0, 1] (DECA's
        crop, `crops`): {"shape": (B, S), "expression", "global_pose",
        "jaw_pose", "camera", "light", ...} float32, no w needed (NoW's
        predictions, `face3d predict now`)."""
        crop = np.asarray(crop, np.float32)
        if crop.ndim != 4 or crop.shape[1:] != (self.crop_size, self.crop_size, 3):
            raise ValueError(f"crop of shape {crop.shape}: expected (B, {self.crop_size}, "
                             f"{self.crop_size}, 3)")
        parts = [jax.device_get(self._codes(jnp.asarray(_pad(crop[s:s + batch], batch))))
                 for s in range(0, len(crop), batch)]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts])[:len(crop)]
                for k in parts[0]}

    def faces_from_crops(self, crop, w, images, batch: int = 8) -> Faces:
        """Faces whose E_shape input is given: crop (B, c, c, 3) float in
        [0, 1] (DECA's crop of a photograph, `face3d reconstruct`), w (B, L,
        512) for G_Disp and G_Ab, images (B, H, W, 3) uint8 kept as
        `Faces.image`."""
        crop = np.asarray(crop, np.float32)
        w = self.check_w(w)
        if crop.shape != (len(w), self.crop_size, self.crop_size, 3):
            raise ValueError(f"crop of shape {crop.shape}: expected ({len(w)}, "
                             f"{self.crop_size}, {self.crop_size}, 3)")
        parts = []
        for start in range(0, len(w), batch):
            cb, wb = crop[start:start + batch], w[start:start + batch]
            real = len(wb)
            out = jax.device_get(self._decode(jnp.asarray(_pad(cb, batch)),
                                              jnp.asarray(_pad(wb, batch))))
            part = dict(w=wb, image=np.asarray(images[start:start + batch]), crop=cb,
                        **jax.tree.map(lambda x, n=real: np.asarray(x)[:n], out))
            parts.append(Faces(**part))
        return _concat(parts)

    def _view_fn(self, vertices, albedo, yaws, *, size):
        b, v = vertices.shape[0], self.model
        # Centred on the mesh's bounding box, its largest side spanning 0.9 of
        # the image: every view shows the whole head (and neck) at one scale,
        # with room for the diagonal a turned head shows (checked to +-45 deg).
        lo, hi = jnp.min(vertices, axis=1), jnp.max(vertices, axis=1)
        centre = (lo + hi) * 0.5
        extent = jnp.max(hi - lo, axis=-1)

        def one(yaw):
            c, s = jnp.cos(yaw), jnp.sin(yaw)
            rot = jnp.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], jnp.float32)
            verts = jnp.einsum("ij,bvj->bvi", rot, vertices - centre[:, None])
            cam = jnp.stack([1.8 / extent, jnp.zeros(b), jnp.zeros(b)], -1)
            return render(verts, v.faces, v.uv_coords, v.uv_faces, albedo,
                          WeakPerspectiveCamera(cam=cam), (size, size),
                          sh_coeffs=default_sh_light(b), background=jnp.ones(
                              (b, size, size, 3), jnp.float32)).image

        return jax.vmap(one)(yaws)  # (Y, B, S, S, 3)

    def views(self, faces: Faces, yaws_deg=PAPER_YAWS, size: int = 256) -> np.ndarray:
        """Renders of each canonical face (`Faces.canonical`) turned by each yaw
        (degrees, about the vertical axis), under the default light
        (`render.views.default_sh_light`) on white, framed on the head:
        (B, Y, size, size, 3) float32 in [0, 1]."""
        yaws = jnp.deg2rad(jnp.asarray(yaws_deg, jnp.float32))
        out = self._views(jnp.asarray(faces.canonical), jnp.asarray(faces.albedo), yaws,
                          size=int(size))
        return np.clip(np.asarray(out).transpose(1, 0, 2, 3, 4), 0.0, 1.0)


def _pad(x: np.ndarray, batch: int) -> np.ndarray:
    """x (n <= batch, ...) padded to batch rows with its last row: one compiled
    shape serves every batch."""
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), 0)])


def _concat(parts: list[Faces]) -> Faces:
    fields = [f.name for f in dataclasses.fields(Faces)]
    merged = jax.tree.map(lambda *xs: np.concatenate(xs),
                          *[{k: getattr(p, k) for k in fields} for p in parts])
    merged["albedo"] = np.clip(merged["albedo"], 0.0, 1.0)
    merged["render"] = np.clip(merged["render"], 0.0, 1.0)
    return Faces(**merged)


def _generate_config(config):
    from face3d_train.data import generate_config

    return generate_config(config)


def load_run(workdir, step: int | None = None, *, truncation: float | None = None
             ) -> TrainedModel:
    """Loads a run's generator side from its workdir.

    Args:
      workdir: a `face3d train` folder (config.json, checkpoints/).
      step: the checkpoint to read (default: the last).
      truncation: psi of the source's mapping for `w_from_z` (default: the
        run's `data.generate.truncation`).
    Returns:
      A `TrainedModel`.
    Raises (one line naming the file and what is wrong):
      FileNotFoundError: no workdir, config.json, checkpoint (or that step), or
        an asset file the config names.
      ValueError: config.json unreadable, from another version of the code, or
        a checkpoint that does not match it.
    """
    from face3d_jax.data.dataset_sources import StyleGAN2Source, TeacherSource
    from face3d_train.loop import load_model
    from face3d_train.state import make_setup

    workdir = Path(workdir)
    config = read_run_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} is missing: the run has not saved a checkpoint yet")
    # F and VGG16 are not part of a checkpoint (frozen); the generator side
    # does not need them, so a run loads without their weight files.
    gen_config = ml_collections.ConfigDict(config.to_dict())
    gen_config.model.identity.kind, gen_config.model.identity.weights = "dlib", ""
    if "perceptual" in gen_config.model:
        gen_config.model.perceptual.weights = ""
    with Checkpointer(ckpt_dir, save_every=1, async_save=False, read_only=True) as ckpt:
        step = ckpt.saved_step(step)
        try:
            model = load_model(gen_config)
            setup = make_setup(gen_config, model, jax.random.key(0))
            gcfg = _generate_config(gen_config)
        except (AttributeError, KeyError, TypeError) as err:
            raise _run_error(workdir / "config.json",
                             f"not readable by this version of face3d ({err})") from None
        state, _ = ckpt.restore(jax.eval_shape(setup.init_state, jax.random.key(0)), step)
    if truncation is not None:
        gcfg = dataclasses.replace(gcfg, truncation=float(truncation))
    source = TeacherSource(gcfg, model) if gcfg.source == "teacher" else StyleGAN2Source(gcfg)
    return TrainedModel(config, model, setup, state, step, source, workdir)
