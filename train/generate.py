"""`face3d generate` and `face3d edit`: 3D faces of a trained run written to a
folder (`face_files` lists the files of one face).

    run = trained.load_run("runs/tiny")
    generate(run, run.w_from_seeds(range(4)), "out/")                  # seed0000.glb, ...
    edit(run, run.w_from_seeds([7]), boundary("smile", run), [-3, 0, 3], "out/")

Editing is InterFaceGAN's (Shen et al. 2020), as the paper edits (Sec. 5.1,
Fig. 8): w' = w + alpha n for a unit normal n of a linear boundary in w space,
added to every row of w; the source image, E_shape's codes, G_Disp and G_Ab
all follow w'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face3d_jax.data import boundaries as bd
from face3d_train import face_files as ff
from face3d_train.trained import PAPER_YAWS, TrainedModel

VIEW_SIZE = 256
FACE_BATCH = 8  # faces per compiled call of `TrainedModel.faces`
TURNTABLE_FRAMES = 48  # one sweep out and back at 24 fps: 2 s
TURNTABLE_MAX_YAW = 60.0


def views_of(run: TrainedModel, faces, yaws, size: int) -> np.ndarray:
    """(B, Y, S, S, 3) renders, `len(PAPER_YAWS)` yaws per call so that one
    compiled shape serves every request."""
    chunk = len(PAPER_YAWS)
    yaws = np.asarray(yaws, np.float32)
    padded = np.concatenate([yaws, np.zeros((-len(yaws)) % chunk, np.float32)])
    out = [run.views(faces, padded[i:i + chunk], size) for i in range(0, len(padded), chunk)]
    return np.concatenate(out, axis=1)[:, :len(yaws)]


def turntable_yaws(frames: int = TURNTABLE_FRAMES, max_yaw: float = TURNTABLE_MAX_YAW):
    """Yaws (degrees) of a sweep 0 -> +max -> -max -> 0 in `frames` steps."""
    t = np.arange(frames, dtype=np.float64) / frames
    return (max_yaw * np.sin(2.0 * np.pi * t)).astype(np.float32)


def generate(run: TrainedModel, w, out_dir, *, names=None, video: bool = False,
             progress: bool = True, size: int = VIEW_SIZE) -> list[Path]:
    """Writes the 3D faces of w ((B, L, 512) or (B, 512) float) into out_dir.

    names: one file stem per face (default face0000, ...); video: also
    NAME_turntable.mp4, an azimuth sweep of the detailed mesh. Returns the
    paths written.
    """
    from tqdm import tqdm

    w = run.check_w(w)
    names = list(names) if names is not None else [f"face{i:04d}" for i in range(len(w))]
    if len(names) != len(w):
        raise ValueError(f"{len(names)} names for {len(w)} latents")
    paths = []
    with tqdm(total=len(w), desc="generate", unit="face", disable=not progress) as bar:
        for start in range(0, len(w), FACE_BATCH):
            faces = run.faces(w[start:start + FACE_BATCH], batch=FACE_BATCH)
            for j in range(len(faces)):
                one, name = faces.take([j]), names[start + j]
                views = views_of(run, one, PAPER_YAWS, size)
                paths += ff.write_face(out_dir, name, one, 0, run.model, views=views[0],
                                       yaws=PAPER_YAWS, max_displacement=run.max_displacement)
                if video:
                    frames = views_of(run, one, turntable_yaws(), size)[0]
                    paths.append(ff.write_video(Path(out_dir) / f"{name}_turntable.mp4", frames))
                bar.update(1)
    return paths


def boundary(name_or_path: str, run: TrainedModel) -> np.ndarray:
    """A unit normal (512,) float32: an InterFaceGAN .npy ((1, 512) or (512,))
    by path, or by attribute name one the run's dataset builder fitted
    (`bd.EDIT_ATTRIBUTES`, in <dataset>/work/boundaries or the config's
    `data.generate.boundaries`)."""
    if name_or_path.endswith(".npy") or "/" in name_or_path:
        return bd.load_boundary(name_or_path, run.style_dim)
    folder = run.boundary_folder
    path = folder / f"{name_or_path}.npy"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.npy")) if folder.is_dir() else []
        raise FileNotFoundError(f"{path}: no boundary {name_or_path!r} for this run (fitted: "
                                f"{', '.join(known) or 'none'}; or give a .npy path)")
    return bd.load_boundary(path, run.style_dim)


def _alpha_name(alpha: float) -> str:
    return f"{alpha:+.2f}".replace(".", "p").replace("+", "plus").replace("-", "minus")


def edit(run: TrainedModel, w, normal, alphas, out_dir, *, name: str = "edit",
         video: bool = False, progress: bool = True, size: int = VIEW_SIZE) -> list[Path]:
    """InterFaceGAN's edit of one face: w + alpha * normal for each alpha.

    Args:
      w: (1, L, 512), (L, 512)... one latent (`TrainedModel.check_w`'s shapes, B = 1).
      normal: (512,) unit boundary normal; alphas: floats.
    Writes NAME_<alpha>.* per alpha (`face_files`), NAME_strip.png (top: the
    source images, bottom: the frontal renders, one column per alpha) and with
    `video` NAME.mp4, the edit swept from the first alpha to the last.
    Returns the paths written.
    """
    from tqdm import tqdm

    w = run.check_w(w)
    if len(w) != 1:
        raise ValueError(f"edit takes one latent, got {len(w)}")
    normal = np.asarray(normal, np.float32).reshape(-1)
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("no alpha given")
    paths, front, sources = [], [], []
    edited = run.faces(w + np.asarray(alphas, np.float32)[:, None, None] * normal,
                       batch=FACE_BATCH)
    for k in tqdm(range(len(alphas)), desc="edit", unit="face", disable=not progress):
        alpha, faces = alphas[k], edited.take([k])
        views = views_of(run, faces, PAPER_YAWS, size)
        stem = f"{name}_{_alpha_name(alpha)}"
        paths += ff.write_face(out_dir, stem, faces, 0, run.model, views=views[0],
                               yaws=PAPER_YAWS, max_displacement=run.max_displacement,
                               extra=dict(alpha=np.float32(alpha), normal=normal))
        front.append(views[0, PAPER_YAWS.index(0.0)])
        sources.append(faces.image[0])
    grid = np.concatenate([ff.strip(sources, size), ff.strip(front, size)], axis=0)
    paths.append(ff.write_png(Path(out_dir) / f"{name}_strip.png", grid))
    if video:
        sweep = np.linspace(alphas[0], alphas[-1], TURNTABLE_FRAMES)
        faces = run.faces(w + sweep.astype(np.float32)[:, None, None] * normal,
                          batch=FACE_BATCH)
        frames = []
        for start in range(0, len(faces), FACE_BATCH):
            part = faces.take(slice(start, start + FACE_BATCH))
            views = views_of(run, part, [0.0], size)[:, 0]
            frames += [ff.strip([part.image[k], views[k]], size) for k in range(len(part))]
        paths.append(ff.write_video(Path(out_dir) / f"{name}.mp4", frames))
    return paths
