"""The files of generated 3D faces (`face3d generate`, `face3d edit`):
meshes, maps, renders, codes and videos.

Per face NAME in the output folder:
  NAME.glb                the detailed mesh facing +z (`Faces.canonical`), the
                          albedo embedded as its base colour
  NAME.obj, .mtl, .png    the same as Wavefront OBJ; NAME.png is the albedo
  NAME_displacement.png   the displacement map, 16-bit grey: 0 is -max, 65535
                          is +max (`max_displacement` in NAME.npz), 32768 ~ 0
  NAME_views.png          the source image beside renders at the paper's yaws
  NAME.npz                w, the FLAME/camera/light codes, the yaws, the
                          displacement's scale
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face3d_jax import export

MP4_CODEC = "mp4v"  # MPEG-4 Part 2: in every opencv-python wheel (H.264 is not)


def to_u8(image) -> np.ndarray:
    """float [0, 1] (..., 3) -> uint8 (a uint8 image passes unchanged)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def strip(images, size: int) -> np.ndarray:
    """Images side by side at `size` x `size`: a list of (H, W, 3) uint8 or
    float [0, 1] -> (size, size * n, 3) uint8."""
    return np.concatenate([_resize(to_u8(im), size) for im in images], axis=1)


def write_png(path, image) -> Path:
    """An (H, W, 3) uint8/float [0, 1] RGB or (H, W) uint16 grey image as PNG."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    data = image if image.dtype == np.uint16 else to_u8(image)[..., ::-1]  # cv2 is BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise OSError(f"{path}: could not write the PNG")
    return path


def displacement_png(displacement, max_displacement: float) -> np.ndarray:
    """(Td, Td, 1) float metres in [-max, max] -> (Td, Td) uint16, -max -> 0,
    +max -> 65535 (row 0 at v = 1, as the albedo)."""
    d = np.asarray(displacement, np.float64)[..., 0] / float(max_displacement)
    return np.round((np.clip(d, -1.0, 1.0) + 1.0) * 0.5 * 65535.0).astype(np.uint16)


def mesh_arrays(faces, index: int, model) -> dict:
    """`export.export_glb`'s / `export_obj`'s arguments for face `index` of a
    `trained.Faces`: the canonical detailed mesh (V, 3) float32 metres, its
    smooth vertex normals (without them three.js shades a glTF flat, every
    triangle showing), the UV layout and the albedo (Ta, Ta, 3) as texture."""
    from face3d_jax.flame import vertex_normals

    tri = np.asarray(model.faces)
    vertices = np.asarray(faces.canonical[index], np.float32)
    normals = np.asarray(vertex_normals(vertices[None], tri))[0]
    return dict(vertices=vertices, faces=tri, uv_coords=np.asarray(model.uv_coords),
                uv_faces=np.asarray(model.uv_faces), texture=faces.albedo[index],
                normals=normals)


def write_face(out_dir, name: str, faces, index: int, model, *, views=None, yaws=(),
               max_displacement: float, extra: dict | None = None) -> list[Path]:
    """Writes face `index` of a `trained.Faces` batch as NAME.* (module docstring).

    Args:
      out_dir: the folder (created); name: the files' stem (no whitespace).
      faces: a `trained.Faces`; model: the FLAME model (faces, uv_coords, uv_faces).
      views: (Y, S, S, 3) float renders of this face at `yaws` (degrees), or None.
      max_displacement: G_Disp's range in metres (the 16-bit PNG's scale).
      extra: more arrays for NAME.npz (e.g. the edit's alpha).
    Returns:
      The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    i = int(index)
    mesh = mesh_arrays(faces, i, model)
    paths = export.export_glb(out / f"{name}.glb", **mesh)
    paths += export.export_obj(out / f"{name}.obj", **mesh)
    paths.append(write_png(out / f"{name}_displacement.png",
                           displacement_png(faces.displacement[i], max_displacement)))
    if views is not None:
        size = int(np.asarray(views).shape[1])
        paths.append(write_png(out / f"{name}_views.png", strip(
            [faces.image[i], *np.asarray(views)], size)))
    codes = {f"code_{k}": np.asarray(v[i]) for k, v in faces.codes.items()}
    np.savez(out / f"{name}.npz", w=faces.w[i], yaws=np.asarray(yaws, np.float32),
             max_displacement=np.float32(max_displacement), **codes, **(extra or {}))
    paths.append(out / f"{name}.npz")
    return paths


def write_video(path, frames, fps: float = 24.0) -> Path:
    """(N, H, W, 3) uint8/float [0, 1] RGB frames -> an MP4 (opencv's
    VideoWriter, codec `MP4_CODEC`), as the authors' video.py writes one."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [to_u8(f) for f in frames]
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*MP4_CODEC), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: opencv could not open an MP4 writer ({MP4_CODEC})")
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
    finally:
        writer.release()
    return path
