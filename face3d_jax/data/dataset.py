"""`face3d data generate`: the training set of Sec. 5.1, resumable and deterministic.

    result = generate(GenerateConfig(source="teacher", identities=30000), "data/")
    builder = tfds_builder.load_builder(result.dataset_dir)   # loader.py reads it

Per identity: z (chosen for diversity, below), w = mapping(z), and `edits`
images: the original and edits w + alpha n along InterFaceGAN boundaries of
expression (smile, jaw_open) and pose (yaw, pitch), taken in turn, each to a
target offset drawn uniformly in +-`edit_range` standard deviations of the
codes' spread along n (boundaries.py). Per image: dlib's 68 landmarks (the
teacher's projected truth beside them), DECA's 224 crop, a FLAME landmark fit
on a `fit_size` crop and the Sec. 3 pseudo-ground-truth UV albedo.

Sources: "teacher" (the synthetic world, teacher.py; labels are its truth)
or "stylegan2" (a converted folder; labels from the detected landmarks,
`boundaries.landmark_labels`). With a converted FFHQ StyleGAN2 checkpoint
this is the paper's dataset.

Landmarks (`landmarks`): "detected" uses dlib's and skips images without a
face (counted); "truth" uses the teacher's (dlib's still stored, NaN where it
found none). "auto" is "truth" for the teacher and "detected" for StyleGAN2:
dlib's HOG detector found a face in 1 of 8 teacher images at 256 and at 512
pixels (its procedural faces are not photographs), and where it did its
landmarks were 5-11 px from the truth.

Diversity (the paper follows its ref. [42] without details): each shard draws
`candidates` z per identity and keeps the identities by farthest-point
sampling on w (first row), so no two identities of a shard are near copies.

Resumable and deterministic: identities are cut into shards of
`identities_per_shard`; shard s draws from jax.random.fold_in(key, s) and is
written atomically to work/shard_XXXXX.npz, so a rerun skips the finished
shards and regenerates the rest bit for bit; work/config.json pins the
settings (a rerun with different ones raises). Boundaries are fitted once
(work/boundaries/<attribute>.npy, InterFaceGAN's format) unless given. When
every shard is there, tfds_builder writes the ArrayRecord dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax.data import boundaries as bd
from face3d_jax.data import tfds_builder
from face3d_jax.data.dataset_sources import (StyleGAN2Source, TeacherSource, detect_landmarks,
                                             farthest_points)

_SOURCES = ("teacher", "stylegan2")
_MODES = ("auto", "detected", "truth")
# fold_in tags separating the random streams of one seed.
_Z, _EDIT, _BOUNDARY, _REFERENCE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Settings of `generate` (see the module docstring).

    source: "teacher" or "stylegan2" (needs `checkpoint`, a converted folder).
    identities, edits: N identities, images per identity (original + edits).
    resolution: teacher image size (StyleGAN2: the checkpoint's).
    teacher_albedo_size, teacher_seed, teacher_calibration: the teacher
      world's UV size, seed and calibration samples (they define the world).
    albedo_size: pseudo-GT albedo size Ta; crop_size: the stored crop (224);
    fit_size: crop side the landmark fit and texture extraction work on.
    fit_steps, rigid_steps: Adam steps of `fitting.fit_landmarks`.
    truncation: psi toward the mean w; candidates: z drawn per identity.
    edit_range: edit targets in +- this many standard deviations.
    boundary_samples: codes for fitting the boundaries; boundaries: folder of
      pre-computed <attribute>.npy (None: fit them).
    landmarks: "auto", "detected" or "truth"; seed: the dataset's seed.
    identities_per_shard: resumption granularity; batch: images per jit call.
    """

    source: str = "teacher"
    checkpoint: str | None = None
    identities: int = 100
    edits: int = 11
    resolution: int = 256
    teacher_albedo_size: int = 256
    teacher_seed: int = 0
    teacher_calibration: int = 2048
    albedo_size: int = 256
    crop_size: int = 224
    fit_size: int = 512
    fit_steps: int = 300
    rigid_steps: int = 100
    truncation: float = 1.0
    candidates: int = 4
    edit_range: float = 2.0
    boundary_samples: int = 4000
    boundaries: str | None = None
    landmarks: str = "auto"
    seed: int = 0
    identities_per_shard: int = 16
    batch: int = 8
    model: str | None = None

    def __post_init__(self):
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {self.source!r}")
        if self.source == "stylegan2" and not self.checkpoint:
            raise ValueError("--source stylegan2 needs --checkpoint DIR (a `face3d convert "
                             "stylegan2` folder)")
        if self.landmarks not in _MODES:
            raise ValueError(f"landmarks must be one of {_MODES}, got {self.landmarks!r}")
        if self.source == "stylegan2" and self.landmarks == "truth":
            raise ValueError("--landmarks truth needs the teacher (StyleGAN2 has no truth)")
        for name in ("identities", "edits", "identities_per_shard", "batch", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def landmark_mode(self) -> str:
        if self.landmarks != "auto":
            return self.landmarks
        return "truth" if self.source == "teacher" else "detected"

    def pinned(self) -> dict:
        """The settings that determine the shards' contents (not N or batch)."""
        d = dataclasses.asdict(self)
        for name in ("identities", "batch"):
            d.pop(name)
        return d


@dataclasses.dataclass
class GenerateResult:
    """What `generate` did: the dataset folder, images written, images skipped
    for having no detectable face, images where dlib found no face (stored
    with NaN landmarks, truth mode), shards generated and skipped, and the
    throughput of image generation and of albedo extraction (images/s, this
    run's shards only; 0 when none ran)."""

    dataset_dir: Path
    images: int
    skipped_no_face: int
    not_detected: int
    shards_generated: int
    shards_skipped: int
    generation_images_per_s: float
    albedo_images_per_s: float


def _padded_batches(n: int, batch: int):
    """Index arrays of fixed length `batch` (the last padded by repetition,
    so one compiled shape serves all) and how many of each are real."""
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        yield np.concatenate([idx, np.full(batch - len(idx), idx[-1])]), len(idx)


def _albedo_fn(cfg: GenerateConfig, model):
    """The jitted per-batch chain: 224 crop, fit crop, landmark fit, pseudo-GT albedo."""
    from face3d_jax import fitting
    from face3d_jax import texture as tex
    from face3d_jax.faces.crop import warp_crop
    from face3d_jax.render.renderer import WeakPerspectiveCamera

    if model.uv_coords is None or model.uv_faces is None:
        raise ValueError("the face model has no UV layout (FLAME needs head_template.obj or "
                         "FLAME_texture.npz beside it)")
    uvr = tex.uv_raster(model.uv_coords, model.uv_faces, cfg.albedo_size)
    fit_res = (cfg.fit_size, cfg.fit_size)

    def run(images, m_crop, m_fit, target):
        crop = jax.vmap(lambda im, m: warp_crop(im, m, cfg.crop_size))(images, m_crop)
        fit_crop = jax.vmap(lambda im, m: warp_crop(im, m, cfg.fit_size))(images, m_fit) / 255.0
        fit = fitting.fit_landmarks(model, target, fit_res, steps=cfg.fit_steps,
                                    rigid_steps=cfg.rigid_steps)
        albedo = tex.pseudo_ground_truth_albedo(
            fit_crop, fit.vertices, model.faces, model.uv_coords, model.uv_faces,
            WeakPerspectiveCamera(cam=fit.params.cam), size=cfg.albedo_size, uvr=uvr).albedo
        as_u8 = lambda x: jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)
        return as_u8(crop), as_u8(albedo * 255.0)

    return jax.jit(run)


def _boundaries(cfg: GenerateConfig, source, key, work: Path) -> dict:
    """name -> (style_dim,) unit normal: given, already fitted, or fitted now."""
    folder = Path(cfg.boundaries) if cfg.boundaries else work / "boundaries"
    files = {name: folder / f"{name}.npy" for name in bd.EDIT_ATTRIBUTES}
    if cfg.boundaries or all(p.is_file() for p in files.values()):
        return {n: bd.load_boundary(p, source.style_dim) for n, p in files.items()}
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, _BOUNDARY),
                                     (cfg.boundary_samples, source.style_dim), jnp.float32))
    w = np.concatenate([source.mapping(z[i]) for i, _ in
                        _padded_batches(len(z), 512)])[:len(z)]
    if cfg.source == "teacher":
        labels = source.labels(w, None)
    else:
        # No labels for StyleGAN2: render the codes and score their landmarks.
        from face3d_jax.faces.detect import FaceTools

        tools, lmk = FaceTools.load(), []
        for idx, real in _padded_batches(len(w), cfg.batch):
            lmk.append(detect_landmarks(tools, source.render(w[idx])[0][:real]))
        labels = source.labels(w, np.concatenate(lmk))
    out = {}
    for name in bd.EDIT_ATTRIBUTES:
        out[name] = bd.fit_boundary(w, labels[name])
        bd.save_boundary(files[name], out[name])
    return out


def _shard_codes(cfg: GenerateConfig, source, key, shard: int, ids: np.ndarray, normals, ref):
    """(len(ids) * edits, n_latent, style_dim) float32 codes of one shard,
    identity-major, edit 0 the original."""
    k = cfg.candidates
    z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, _Z), shard),
                                     (len(ids) * k, source.style_dim), jnp.float32))
    w_all = source.mapping(z)
    w0 = w_all[farthest_points(w_all[:, 0], len(ids))] if k > 1 else w_all
    names = list(bd.EDIT_ATTRIBUTES)
    codes = []
    for i, identity in enumerate(ids):
        codes.append(w0[i])
        ekey = jax.random.fold_in(jax.random.fold_in(key, _EDIT), int(identity))
        targets = np.asarray(jax.random.uniform(ekey, (cfg.edits,), jnp.float32,
                                                -cfg.edit_range, cfg.edit_range))
        for e in range(1, cfg.edits):
            n = normals[names[(e - 1) % len(names)]]
            alpha = bd.edit_alphas(w0[i][None], n, targets[e:e + 1], ref)[0]
            codes.append(w0[i] + alpha * n)
    return np.stack(codes).astype(np.float32)


def _make_shard(cfg, source, tools, albedo_fn, key, shard, ids, normals, ref, timing):
    """Generates one shard: a dict of stacked arrays (the npz's contents), and
    the counts (skipped, not detected)."""
    from face3d_jax.faces.crop import crop_matrix, transform_points

    w = _shard_codes(cfg, source, key, shard, ids, normals, ref)
    t0 = time.perf_counter()
    images, truth = [], []
    for idx, real in _padded_batches(len(w), cfg.batch):
        im, lm = source.render(w[idx])
        images.append(im[:real])
        truth.append(lm[:real])
    images, truth = np.concatenate(images), np.concatenate(truth)
    detected = detect_landmarks(tools, images)
    timing["generation"] += time.perf_counter() - t0
    used = truth if cfg.landmark_mode == "truth" else detected
    keep = np.flatnonzero(np.isfinite(used).all(axis=(1, 2)))
    labels = source.labels(w, detected)
    t0 = time.perf_counter()
    crops, albedos = [], []
    if len(keep):
        m_crop = np.stack([crop_matrix(used[i], cfg.crop_size) for i in keep]).astype(np.float32)
        m_fit = np.stack([crop_matrix(used[i], cfg.fit_size) for i in keep])
        # The fit's pixel centres sit at j + 0.5; the landmarks' at integers.
        target = np.stack([transform_points(used[i].astype(np.float64), m)
                           for i, m in zip(keep, m_fit)]).astype(np.float32) + 0.5
        m_fit = m_fit.astype(np.float32)
        for idx, real in _padded_batches(len(keep), cfg.batch):
            c, a = albedo_fn(images[keep[idx]], m_crop[idx], m_fit[idx], target[idx])
            crops.append(np.asarray(c)[:real])
            albedos.append(np.asarray(a)[:real])
    timing["albedo"] += time.perf_counter() - t0
    timing["albedo_images"] += len(keep)
    identity = np.repeat(np.asarray(ids, np.int64), cfg.edits)
    edit = np.tile(np.arange(cfg.edits, dtype=np.int32), len(ids))
    empty = lambda *s: np.zeros((0, *s), np.uint8)
    data = dict(w=w[keep], image=images[keep], landmarks=detected[keep],
                landmarks_truth=truth[keep], landmarks_used=used[keep].astype(np.float32),
                crop=np.concatenate(crops) if crops else empty(cfg.crop_size, cfg.crop_size, 3),
                albedo=(np.concatenate(albedos) if albedos
                        else empty(cfg.albedo_size, cfg.albedo_size, 3)),
                identity=identity[keep], edit=edit[keep],
                **{f"label_{n}": np.asarray(labels[n], np.float32)[keep]
                   for n in tfds_builder.LABEL_NAMES})
    return data, len(w) - len(keep), int(np.isnan(detected[:, 0, 0]).sum())


def _check_config(cfg: GenerateConfig, work: Path):
    """Pins the settings in work/config.json; a rerun must match them."""
    path = work / "config.json"
    pinned = json.loads(json.dumps(cfg.pinned()))
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(pinned) if old.get(k) != pinned.get(k))
        if diff:
            raise ValueError(f"{path}: this folder was generated with other settings "
                             f"({', '.join(diff)}); use a new --out or the same settings")
    else:
        path.write_text(json.dumps(pinned, indent=2) + "\n")


def generate(cfg: GenerateConfig, out_dir, *, progress: bool = True,
             source=None) -> GenerateResult:
    """Generates (or resumes) the dataset into `out_dir` (see module docstring).

    `source`: an already built source for `cfg` (dataset_sources.py; saves
    rebuilding the teacher world when generating repeatedly), else built here.

    Writes out_dir/work/ (config.json, boundaries/, shard_XXXXX.npz with their
    counts in shard_XXXXX.json) and the TFDS dataset out_dir/face3d_dataset/1.0.0.
    Returns a `GenerateResult`.
    """
    from tqdm import tqdm

    from face3d_jax.faces.detect import FaceTools
    from face3d_jax.flame import default_model
    from face3d_jax.flame.io import load

    out = Path(out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    _check_config(cfg, work)
    model = default_model() if cfg.model is None else load(cfg.model)
    if source is None:
        source = (TeacherSource(cfg, model) if cfg.source == "teacher" else
                  StyleGAN2Source(cfg))
    key = jax.random.key(cfg.seed)
    normals = _boundaries(cfg, source, key, work)
    ref_z = jax.random.normal(jax.random.fold_in(key, _REFERENCE), (1024, source.style_dim))
    ref = source.mapping(np.asarray(ref_z))[:, 0]
    tools = FaceTools.load()
    albedo_fn = source.cached(
        ("albedo", cfg.albedo_size, cfg.crop_size, cfg.fit_size, cfg.fit_steps,
         cfg.rigid_steps, cfg.model), lambda: _albedo_fn(cfg, model))

    per = cfg.identities_per_shard
    shards = [np.arange(s, min(s + per, cfg.identities)) for s in range(0, cfg.identities, per)]
    paths = [work / f"shard_{s:05d}.npz" for s in range(len(shards))]
    done = [p.is_file() and p.with_suffix(".json").is_file() for p in paths]
    timing = {"generation": 0.0, "albedo": 0.0, "albedo_images": 0}
    total = cfg.identities * cfg.edits
    bar = tqdm(total=total, initial=sum(len(shards[s]) for s in range(len(shards)) if done[s])
               * cfg.edits, unit="img", desc="generate", disable=not progress)
    generated_images = 0
    for s, ids in enumerate(shards):
        if done[s]:
            continue
        data, skipped, not_detected = _make_shard(cfg, source, tools, albedo_fn, key, s, ids,
                                                  normals, ref, timing)
        tmp = paths[s].with_name(paths[s].stem + ".tmp.npz")
        np.savez_compressed(tmp, **data)
        os.replace(tmp, paths[s])  # atomic: a killed run leaves no half shard
        paths[s].with_suffix(".json").write_text(json.dumps(
            {"images": len(data["identity"]), "skipped_no_face": skipped,
             "not_detected": not_detected}) + "\n")
        generated_images += len(ids) * cfg.edits
        bar.update(len(ids) * cfg.edits)
    bar.close()

    counts = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    if not sum(c["images"] for c in counts):
        raise RuntimeError(f"{work}: no image had a detectable face ("
                           f"{sum(c['skipped_no_face'] for c in counts)} skipped); nothing to "
                           "write (try --landmarks truth with the teacher)")
    groups, index = [], 0
    for p in paths:
        with np.load(p, allow_pickle=False) as shard:
            ids = shard["identity"]
        for identity in np.unique(ids):
            n = int((ids == identity).sum())
            groups.append([int(identity), index, n])
            index += n
    spec = dict(cfg.pinned(), identities=cfg.identities, resolution=source.resolution,
                n_latent=source.n_latent, style_dim=source.style_dim, groups=groups,
                landmark_mode=cfg.landmark_mode)
    dataset_dir = out / tfds_builder.NAME / tfds_builder.DATASET_VERSION
    if dataset_dir.is_dir():
        try:
            stale = tfds_builder.load_builder(dataset_dir).info.metadata["spec"] != \
                json.loads(json.dumps(spec))
        except Exception:  # noqa: BLE001  (an unreadable old build is rebuilt)
            stale = True
        if stale:
            shutil.rmtree(dataset_dir)
    dataset_dir = tfds_builder.build(out, paths, spec)
    return GenerateResult(
        dataset_dir=dataset_dir, images=sum(c["images"] for c in counts),
        skipped_no_face=sum(c["skipped_no_face"] for c in counts),
        not_detected=sum(c["not_detected"] for c in counts),
        shards_generated=len(shards) - sum(done), shards_skipped=sum(done),
        generation_images_per_s=(generated_images / timing["generation"]
                                 if timing["generation"] else 0.0),
        albedo_images_per_s=(timing["albedo_images"] / timing["albedo"]
                             if timing["albedo"] else 0.0))
