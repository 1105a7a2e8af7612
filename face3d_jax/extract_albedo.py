"""`face3d extract-albedo`: a photograph's pseudo-ground-truth albedo (Sec. 3).

The chain: dlib finds the largest face and its 68 landmarks; DECA's square
crop (scale 1.25) is cut at `crop_size`; FLAME and a weak-perspective camera
are fitted to the landmarks in the crop (`fitting.fit_landmarks`); then
`texture.pseudo_ground_truth_albedo` extracts the UV texture, completes it from
the mirror, fills what is left and divides out the fitted SH shading.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_jax import fitting
from face3d_jax import texture as tex
from face3d_jax.render.renderer import WeakPerspectiveCamera


def extract_albedo(image, landmarks, model, *, size: int = 512, crop_size: int = 512,
                   fit_steps: int = 300):
    """The pseudo-ground-truth albedo of one face.

    Args:
      image: (H, W, 3) uint8 or float RGB photograph (0..255).
      landmarks: (68, 2) float iBUG landmarks in image pixels (dlib's integer
        pixel convention: pixel centres at integers).
      model: a `FlameModel` with a UV layout.
      size: texture size (a power of two).
      crop_size: side of the crop the fit and the extraction work on.
      fit_steps: Adam steps of the landmark fit.
    Returns:
      (`texture.PseudoAlbedo` of batch 1, `fitting.FitResult`, crop (S, S, 3)
      float32 in [0, 1]).
    """
    from face3d_jax.faces.crop import crop_matrix, transform_points, warp_crop

    if model.uv_coords is None or model.uv_faces is None:
        raise ValueError("extract-albedo: the face model has no UV layout (FLAME needs "
                         "head_template.obj or FLAME_texture.npz beside it)")
    matrix = crop_matrix(np.asarray(landmarks, np.float64), crop_size)
    crop = warp_crop(jnp.asarray(image, jnp.float32), matrix, crop_size)[None] / 255.0
    # Our pixel centres sit at j + 0.5 (render.cameras); dlib's at integers.
    target = jnp.asarray(transform_points(landmarks, matrix) + 0.5, jnp.float32)[None]
    resolution = (crop_size, crop_size)
    fit = jax.jit(lambda t: fitting.fit_landmarks(model, t, resolution, steps=fit_steps))(target)
    uvr = tex.uv_raster(model.uv_coords, model.uv_faces, size)
    camera = WeakPerspectiveCamera(cam=fit.params.cam)
    result = jax.jit(lambda img, v: tex.pseudo_ground_truth_albedo(
        img, v, model.faces, model.uv_coords, model.uv_faces, camera, size=size, uvr=uvr))(
        crop, fit.vertices)
    return result, fit, np.asarray(crop[0])


def write_albedo_files(image_path, out_dir, *, model_path=None, size: int = 512,
                       crop_size: int = 512) -> list[Path]:
    """Runs `extract_albedo` on the largest face of an image file and writes
    texture.png (the completed texture), shading.png, albedo.png (UV space,
    row 0 at v = 1), crop.png and fit.npz (the FLAME fit).

    Raises ValueError (one line) when the image holds no face.
    """
    from PIL import Image

    from face3d_jax.faces.commands import read_rgb
    from face3d_jax.faces.detect import FaceTools
    from face3d_jax.flame import default_model
    from face3d_jax.flame.io import load

    image = read_rgb(image_path)
    faces = FaceTools.load().detect(image)
    if not faces:
        raise ValueError(f"{image_path}: no face found")
    model = default_model() if model_path is None else load(model_path)
    result, fit, crop = extract_albedo(image, faces[0].landmarks, model, size=size,
                                       crop_size=crop_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def png(name, array):
        path = out / name
        Image.fromarray(np.round(np.clip(np.asarray(array), 0, 1) * 255).astype(np.uint8)).save(
            path)
        return path

    written = [png("texture.png", result.texture[0]),
               png("shading.png", np.repeat(np.asarray(result.shading[0]) / 2.0, 3, axis=-1)),
               png("albedo.png", result.albedo[0]), png("crop.png", crop)]
    p = fit.params
    np.savez(out / "fit.npz", shape=p.shape, expression=p.expression, global_pose=p.global_pose,
             jaw_pose=p.jaw_pose, cam=p.cam, sh=np.asarray(result.sh), crop_size=crop_size)
    written.append(out / "fit.npz")
    return written
