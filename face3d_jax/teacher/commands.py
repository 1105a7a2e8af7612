"""`face3d teacher`: draw samples of the synthetic teacher world to files, so
that users see the world and its truth."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from face3d_jax.teacher.params import TeacherConfig, make_teacher
from face3d_jax.teacher.world import labels, mapping, render_scene, scene

# Compiled once per teacher config and batch size, shared by every call (and by
# the tests: the scene and the renderer compile separately, so an edited w
# reuses the compiled scene).
mapping_jit = jax.jit(mapping)
scene_jit = jax.jit(scene)
render_jit = jax.jit(render_scene, static_argnames="backend")
labels_jit = jax.jit(labels)


def _png(path: Path, image) -> Path:
    from PIL import Image

    pixels = np.clip(np.asarray(image), 0.0, 1.0) * 255.0 + 0.5
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def write_teacher_samples(out_dir, num: int = 8, resolution: int = 256, seed: int = 0,
                          albedo_size: int = 256, displacement_size: int = 256,
                          truncation: float = 1.0, batch: int = 4, model_path=None,
                          teacher=None) -> list[Path]:
    """Renders `num` teacher samples and writes them under `out_dir`.

    Files: sample_<i>.png (the image), albedo_<i>.png (its UV albedo) and
    truth.npz holding, for all samples, w (N, n_latent, 512), the FLAME
    parameters (shape, expression, global_pose, neck_pose, jaw_pose, eye_pose),
    light (N, 9, 3), camera (N, 3), vertices (N, V, 3) detailed and
    coarse_vertices, landmarks3d (N, 68, 3), landmarks2d (N, 68, 2) in pixels,
    albedo (N, Ta, Ta, 3), displacement (N, Td, Td, 1), mask (N, H, W, 1) and
    the labels (yaw, pitch, roll, jaw_open, smile, brow_raise), all float32.

    Args:
      out_dir: output folder (created).
      num: number of samples (>= 1); seed: the world is make_teacher(key(seed))
        and the samples are drawn from key(seed) folded with 1.
      resolution, albedo_size, displacement_size: image and UV map sizes.
      truncation: psi toward the mean w.
      batch: samples rendered per compiled call.
      model_path: a FLAME model instead of the procedural default.
      teacher: an existing `Teacher` (then the sizes, seed's world and model
        are its own).
    Returns:
      The written paths.
    """
    if num < 1 or batch < 1:
        raise ValueError(f"teacher: --num and --batch must be at least 1, got {num} and {batch}")
    if teacher is None:
        from face3d_jax.flame import default_model, load

        model = load(model_path) if model_path else default_model()
        config = TeacherConfig(resolution=resolution, albedo_size=albedo_size,
                               displacement_size=displacement_size)
        teacher = make_teacher(jax.random.key(seed), model, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = min(batch, num)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), -(-num // batch))
    records: dict[str, list] = {}
    written: list[Path] = []
    for chunk, key in enumerate(keys):
        z = jax.random.normal(key, (batch, teacher.config.style_dim), jax.numpy.float32)
        w = mapping_jit(teacher, z, truncation)
        scene_ = scene_jit(teacher, w)
        drawn = render_jit(teacher, scene_)
        values = dict(w=w, **scene_.flame_params(), light=scene_.light, camera=scene_.camera,
                      albedo=scene_.albedo, displacement=scene_.displacement,
                      vertices=drawn.vertices, coarse_vertices=drawn.coarse_vertices,
                      landmarks3d=drawn.landmarks3d, landmarks2d=drawn.landmarks2d,
                      mask=drawn.mask, **labels_jit(teacher, w))
        keep = min(batch, num - chunk * batch)
        for name, value in values.items():
            records.setdefault(name, []).append(np.asarray(value, np.float32)[:keep])
        for j in range(keep):
            index = chunk * batch + j
            written.append(_png(out / f"sample_{index:04d}.png", drawn.image[j]))
            written.append(_png(out / f"albedo_{index:04d}.png", scene_.albedo[j]))
    truth = out / "truth.npz"
    np.savez(truth, **{name: np.concatenate(parts) for name, parts in records.items()})
    written.append(truth)
    return written
