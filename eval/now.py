"""The NoW benchmark's protocol (Sanyal et al., CVPR 2019), without psbody-mesh.

`face3d eval now --predictions DIR --gt NOW_ROOT` scores a folder of
predictions as now_evaluation's `compute_error.py` does, and writes its result
files, so NoW's own `cumulative_errors.py` reads ours:

  <predictions>/results/<method>_computed_distances.npy   a pickled dict:
      computed_distances  list of (n_i,) float arrays, one per image found
      num_missing_files   int
      input_files         array of the image list's lines that were scored
  <...>.npy.meanmedian     the median and the mean, one per line

Per image (`scan_to_mesh_errors`):
  1. the scan is cropped to NoW's sphere around the face (`crop_scan`: centre
     0.3 of the way from the nose bottom to the bridge, radius 1.4 x the mean
     of the outer eye distance and the nose length, from the 7 points of the
     scan's MeshLab .pp file);
  2. the prediction is aligned to the scan on the 7 landmarks by Procrustes
     with scale (`procrustes`, MATLAB's, as NoW's);
  3. the alignment is refined (rotation, translation and, except in the
     metrical protocol, scale) to minimise the sum of squared distances from
     the cropped scan's vertices to the prediction's surface (`refine`);
  4. the errors are the distances from every cropped scan vertex to the
     nearest point of any triangle of the aligned prediction
     (`face3d_jax.mesh_distance`: exact, a k-d tree with a certified bound).

Where it can differ from the official script:
  - step 3's minimiser: NoW runs chumpy's dogleg on the scan-to-mesh
    residuals; here it is iterative closest point with Umeyama's closed-form
    similarity per iteration, which decreases the same objective at every
    step until it changes by less than `REFINE_TOL` relative. Both find a
    local minimum near the landmark alignment; they can stop at slightly
    different ones on flat objectives (differences of ~1e-3 mm are expected).
  - the metrical protocol: NoW applies Procrustes' rotation with the unit's
    factor instead of Procrustes' scale but keeps the translation fitted for
    Procrustes' scale (its refinement then moves the mesh); here the
    translation is refitted for the fixed scale, a better start for the same
    refinement (rotation and translation only, as NoW's).
  - files NoW's loader rejects (OBJ with vertex colours) load here; a
    prediction whose landmark file is not 7 points is counted as missing with
    one line, where NoW's script stops with an assertion.
  - NoW shuffles each image's distances (np.random.shuffle); the order does
    not enter any statistic, and ours keeps the scan's vertex order.
  - `clean_degenerated_faces` is not needed: the point-triangle distance
    handles zero-area triangles (a zero-area triangle's points all lie on its
    edges, whose distance is computed anyway).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face3d_jax.mesh_distance import SurfaceIndex

log = logging.getLogger(__name__)

NUM_LANDMARKS = 7
CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
UNIT_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
REFINE_TOL = 1e-6  # relative change of the mean squared distance that ends refinement
REFINE_MAX_ITER = 200


# ---------------------------------------------------------------- reading files

def read_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """An OBJ or PLY mesh as ((V, 3) float64 vertices, (F, 3) int64 faces),
    unprocessed (vertex order kept)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mesh file")
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as exc:  # noqa: BLE001  trimesh raises many kinds on a bad file
        raise ValueError(f"{path}: not a readable mesh ({exc})") from None
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    if v.ndim != 2 or len(v) == 0 or f.ndim != 2 or len(f) == 0:
        raise ValueError(f"{path}: a mesh with {len(v)} vertices and {len(f)} triangles; "
                         "expected both")
    return v, f


def read_pp(path) -> np.ndarray:
    """The 7 points of a MeshLab picked-points (.pp) file, in file order.

    NoW's order: right eye outer, right eye inner, left eye inner, left eye
    outer corner, nose bottom, right and left mouth corners.
    Returns (7, 3) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MeshLab .pp file")
    try:
        root = ET.parse(path).getroot()
        pts = [[float(p.attrib[a]) for a in "xyz"] for p in root.iter("point")]
    except (ET.ParseError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a MeshLab .pp file with x, y, z points ({exc})") from None
    return _check_landmarks(np.asarray(pts, np.float64).reshape(-1, 3), path)


def read_landmarks(path) -> np.ndarray:
    """A prediction's 7 landmarks: .npy of (7, 3) or (1, 7, 3), or a .txt of 7
    rows "x y z". Returns (7, 3) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such landmark file")
    try:
        if path.suffix == ".npy":
            lmk = np.load(path, allow_pickle=False)
        else:
            lmk = np.loadtxt(path, ndmin=2)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable landmark file ({exc})") from None
    lmk = np.asarray(lmk, np.float64)
    if lmk.ndim == 3 and lmk.shape[0] == 1:
        lmk = lmk[0]
    return _check_landmarks(lmk, path)


def _check_landmarks(lmk: np.ndarray, path) -> np.ndarray:
    if lmk.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"{path}: landmarks of shape {lmk.shape}, expected ({NUM_LANDMARKS}, 3) "
                         "(NoW's 7 points)")
    if not np.all(np.isfinite(lmk)):
        raise ValueError(f"{path}: landmarks hold NaN or infinite values")
    return lmk


# ---------------------------------------------------------------- the protocol

def crop_scan(scan_vertices, scan_landmarks) -> np.ndarray:
    """NoW's face crop (`compute_mask`): indices of the scan vertices within
    the sphere. scan_vertices (N, 3), scan_landmarks (7, 3) float, NoW's
    order. Returns (n,) int64."""
    lmk = np.asarray(scan_landmarks, np.float64)
    nose_bottom = lmk[4]
    bridge = 0.5 * (lmk[1] + lmk[2])
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * 0.5 * (np.linalg.norm(lmk[0] - lmk[3]) + np.linalg.norm(bridge - nose_bottom))
    dist = np.linalg.norm(np.asarray(scan_vertices, np.float64) - centre, axis=1)
    return np.nonzero(dist <= radius)[0]


@dataclass(frozen=True)
class Similarity:
    """x -> scale * x @ rotation.T + translation, on (..., 3) points."""

    scale: float
    rotation: np.ndarray  # (3, 3); det -1 where Procrustes chose a reflection
    translation: np.ndarray  # (3,)

    def __call__(self, x) -> np.ndarray:
        return self.scale * np.asarray(x, np.float64) @ self.rotation.T + self.translation

    def then(self, other: Similarity) -> Similarity:
        """other(self(x))."""
        return Similarity(other.scale * self.scale, other.rotation @ self.rotation,
                          other.scale * self.translation @ other.rotation.T + other.translation)


def procrustes(target, source, *, scaling: bool = True, reflection: bool | str = "best"
               ) -> Similarity:
    """MATLAB's `procrustes` as NoW uses it (target = the scan's 7 points,
    source = the prediction's): the least-squares similarity taking source
    onto target. `reflection="best"` (NoW's) lets a reflection through where
    it fits better; False forces a rotation.

    target, source: (n, 3) float. Returns a `Similarity`."""
    x, y = np.asarray(target, np.float64), np.asarray(source, np.float64)
    mx, my = x.mean(0), y.mean(0)
    x0, y0 = x - mx, y - my
    nx, ny = np.linalg.norm(x0), np.linalg.norm(y0)
    if nx == 0 or ny == 0:
        raise ValueError("procrustes: all landmarks coincide")
    x0, y0 = x0 / nx, y0 / ny
    u, s, vt = np.linalg.svd(x0.T @ y0)
    v = vt.T
    t = v @ u.T  # source rows map by y0 @ t
    if reflection != "best" and (np.linalg.det(t) < 0) != bool(reflection):
        v[:, -1] *= -1
        s[-1] *= -1
        t = v @ u.T
    b = s.sum() * nx / ny if scaling else 1.0
    c = mx - b * my @ t
    return Similarity(float(b), t.T, c)


def _umeyama(src, dst, scaling: bool) -> Similarity:
    """The least-squares proper similarity src -> dst (Umeyama 1991)."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    flip = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[-1] = -1
    rot = u @ np.diag(flip) @ vt
    var = np.mean(np.sum(xs * xs, axis=1))
    scale = float((sv * flip).sum() / var) if scaling and var > 0 else 1.0
    return Similarity(scale, rot, md - scale * ms @ rot.T)


def _gauss_newton(y, normal, d, scaling: bool) -> Similarity:
    """One Gauss-Newton step on point-to-plane residuals: the small similarity
    D(x) = (1 + sigma) exp([omega]x) x + tau minimising
    sum_i (d_i - n_i . (D(y_i) - y_i))^2 to first order, where y_i is the
    nearest point of the current mesh to p_i, n_i the unit direction from
    y_i to p_i and d_i their distance: the linearised scan-to-mesh objective,
    what NoW's dogleg solver steps on."""
    from scipy.spatial.transform import Rotation

    cols = [np.cross(y, normal), normal]  # d r / d omega = y x n; d r / d tau = n
    if scaling:
        cols.append(np.sum(normal * y, axis=1, keepdims=True))
    jac = np.concatenate(cols, axis=1)
    delta = np.linalg.lstsq(jac, d, rcond=None)[0]
    sigma = float(delta[6]) if scaling else 0.0
    return Similarity(1.0 + sigma, Rotation.from_rotvec(delta[:3]).as_matrix(), delta[3:6])


def refine(scan_points, index: SurfaceIndex, *, scaling: bool = True,
           tol: float = REFINE_TOL, max_iter: int = REFINE_MAX_ITER
           ) -> tuple[Similarity, np.ndarray, int]:
    """The rigid (+ scale) refinement of NoW (`rigid_scan_2_mesh_alignment`):
    the similarity T minimising sum_i dist(p_i, T(mesh))^2 over the scan
    points p_i, from the identity.

    Each iteration finds the nearest points, then steps by Gauss-Newton on the
    point-to-plane residuals (fast near the optimum, as NoW's dogleg); a step
    that does not lower the objective is replaced by the closed-form ICP step
    (Umeyama's similarity to the nearest points), which never raises it. The
    mesh stays put and the points move by T's inverse, so the mesh's index is
    built once: dist(p, T(M)) = s dist(T^-1(p), M).

    Args:
      scan_points: (n, 3) float, the cropped scan.
      index: the prediction's `SurfaceIndex` (already landmark-aligned).
      scaling: fit a scale too (False: the metrical protocol).
      tol: stop when an iteration lowers the mean squared distance by less
        than this fraction.
    Returns:
      (T, (n,) float64 distances from each point to T(mesh), iterations).
    """
    p = np.asarray(scan_points, np.float64)
    current = Similarity(1.0, np.eye(3), np.zeros(3))

    def measure(t):
        d, closest, face = index.query(((p - t.translation) @ t.rotation) / t.scale)
        return t.scale**2 * np.mean(d * d), t.scale * d, t(closest), face

    best = (current, *measure(current))
    for it in range(1, max_iter + 1):
        t, energy, dist, nearest, face = best
        gap = p - nearest
        normal = gap / np.maximum(dist, 1e-12)[:, None]
        # Where a point lies on the surface the direction is undefined: use
        # its triangle's normal (the residual's sign does not matter).
        flat = dist < 1e-9 * max(1.0, float(np.max(np.abs(p))))
        if np.any(flat):
            tri = t(index.vertices[index.faces[face[flat]]].reshape(-1, 3)).reshape(-1, 3, 3)
            fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            normal[flat] = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-30)
        step = t.then(_gauss_newton(nearest, normal, dist, scaling))
        trial = (step, *measure(step))
        if not trial[1] < energy:
            step = _umeyama(((nearest - t.translation) @ t.rotation) / t.scale, p, scaling)
            trial = (step, *measure(step))
        if not trial[1] < energy:
            return t, dist, it
        best = trial
        if energy - trial[1] <= tol * energy:
            return trial[0], trial[2], it
    return best[0], best[2], max_iter


def scan_to_mesh_errors(scan_vertices, scan_faces, scan_landmarks, pred_vertices, pred_faces,
                        pred_landmarks, *, metrical: bool = False, unit: str = "m",
                        return_alignment: bool = False):
    """NoW's errors of one prediction against one scan.

    Args:
      scan_vertices: (N, 3) float, the ground-truth scan (NoW's are in mm).
      scan_faces: (F, 3) int (unused by the metric, which samples the scan's
        vertices; kept for the signature of NoW's `compute_errors`).
      scan_landmarks: (7, 3) float, the scan's .pp points.
      pred_vertices: (M, 3) float; pred_faces: (K, 3) int; pred_landmarks:
        (7, 3) float, NoW's 7 points on the prediction.
      metrical: NoW's metrical protocol: no scale is fitted, the prediction's
        `unit` ("mm", "cm" or "m") brings it to millimetres.
      return_alignment: also return the aligned prediction's vertices.
    Returns:
      (n,) float64 distances (scan units) of the n cropped scan vertices to
      the aligned prediction's surface; with return_alignment, a pair
      (distances, (M, 3) aligned vertices).
    """
    del scan_faces
    if metrical and unit not in UNIT_TO_MM:
        raise ValueError(f"unit {unit!r}: expected one of {sorted(UNIT_TO_MM)}")
    scan_vertices = np.asarray(scan_vertices, np.float64)
    pred_vertices = np.asarray(pred_vertices, np.float64)
    for name, lmk in (("scan", scan_landmarks), ("prediction", pred_landmarks)):
        _check_landmarks(np.asarray(lmk, np.float64), f"{name} landmarks")
    keep = crop_scan(scan_vertices, scan_landmarks)
    if len(keep) == 0:
        raise ValueError("the scan has no vertex inside NoW's crop: are its landmarks on it?")
    scan = scan_vertices[keep]
    init = procrustes(scan_landmarks, pred_landmarks)
    if metrical:
        factor = UNIT_TO_MM[unit]
        rot = init.rotation
        lmk = factor * np.asarray(pred_landmarks, np.float64) @ rot.T
        init = Similarity(factor, rot, np.mean(scan_landmarks, 0) - lmk.mean(0))
    aligned = init(pred_vertices)
    index = SurfaceIndex.build(aligned, pred_faces)
    fit, dist, _ = refine(scan, index, scaling=not metrical)
    if return_alignment:
        return dist, fit(aligned)
    return dist


# ---------------------------------------------------------------- the benchmark's folders

@dataclass(frozen=True)
class NowResult:
    """What `evaluate` wrote: the result file, the statistics (mm) over every
    distance of every scored image, and the images counted as missing."""

    path: Path
    median: float
    mean: float
    std: float
    num_images: int
    num_missing: int


def image_list(gt_root, image_set: str = "val", imgs_list=None) -> list[str]:
    """The lines of NoW's image list (imagepathsvalidation.txt for val,
    imagepathstest.txt for test, or a file given)."""
    if imgs_list is None:
        if image_set not in ("val", "test"):
            raise ValueError(f"--image-set {image_set!r}: expected val or test")
        name = "imagepathsvalidation.txt" if image_set == "val" else "imagepathstest.txt"
        imgs_list = Path(gt_root) / name
    imgs_list = Path(imgs_list)
    if not imgs_list.is_file():
        raise FileNotFoundError(f"{imgs_list}: no such image list (NoW's {imgs_list.name})")
    return [ln.strip() for ln in imgs_list.read_text().splitlines() if ln.strip()]


def _one_file(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{folder}: no {what} ({pattern})")
    return found[0]


def _prediction(pred_root: Path, subject: str, challenge: str, stem: str):
    """(mesh path, landmark path) of one image, or a reason it is missing."""
    folder = pred_root / subject / challenge
    mesh = next((folder / f"{stem}{ext}" for ext in (".obj", ".ply")
                 if (folder / f"{stem}{ext}").is_file()), None)
    if mesh is None:
        return f"{folder / stem}.obj|.ply: predicted mesh not found"
    lmk = next((folder / f"{stem}{ext}" for ext in (".npy", ".txt")
                if (folder / f"{stem}{ext}").is_file()), None)
    if lmk is None:
        return f"{folder / stem}.npy|.txt: predicted landmarks not found"
    return mesh, lmk


def evaluate(predictions, gt_root, *, image_set: str = "val", imgs_list=None,
             challenge: str = "", method: str = "RECON", metrical: bool = False,
             unit: str = "m", gt_mesh_folder=None, gt_lmk_folder=None, out=None,
             progress: bool = True) -> NowResult:
    """`compute_error.py`'s `metric_computation`: every image of the list, its
    prediction scored against its subject's scan; writes NoW's result files.

    Args:
      predictions: folder of `<subject>/<challenge>/<IMG>.obj|.ply` with
        `<IMG>.npy|.txt` landmarks beside.
      gt_root: NoW's dataset folder (the image lists, `scans/<subject>/*.obj`,
        `scans_lmks_onlypp/<subject>/*.pp`); gt_mesh_folder / gt_lmk_folder
        override the last two.
      challenge: "" for all, or one of `CHALLENGES`.
      method: NoW's method identifier (file name prefix); "_metrical" is
        appended for the metrical protocol, as NoW does.
      out: the results folder (default `<predictions>/results`).
    Returns:
      a `NowResult`. An image whose prediction is missing or unreadable is
      logged in one line and counted in num_missing, as NoW counts it.
    """
    from tqdm import tqdm

    pred_root, gt_root = Path(predictions), Path(gt_root)
    if not pred_root.is_dir():
        raise FileNotFoundError(f"{pred_root}: no such predictions folder")
    if challenge not in ("", *CHALLENGES):
        raise ValueError(f"challenge {challenge!r}: expected one of {', '.join(CHALLENGES)}")
    if metrical and unit not in UNIT_TO_MM:
        raise ValueError(f"unit {unit!r}: expected one of {sorted(UNIT_TO_MM)}")
    lines = image_list(gt_root, image_set, imgs_list)
    scans = Path(gt_mesh_folder) if gt_mesh_folder else gt_root / "scans"
    lmks = Path(gt_lmk_folder) if gt_lmk_folder else gt_root / "scans_lmks_onlypp"
    distances, scored, missing = [], [], 0
    scan_cache: dict[str, tuple] = {}
    for line in tqdm(lines, desc="NoW", unit="image", disable=not progress):
        parts = line.split("/")
        if len(parts) < 3:
            raise ValueError(f"image list line {line!r}: expected <subject>/<challenge>/<image>")
        subject, chal, name = parts[-3], parts[-2], parts[-1]
        if challenge and chal != challenge:
            continue
        found = _prediction(pred_root, subject, chal, Path(name).stem)
        if isinstance(found, str):
            log.warning("%s: counted as missing", found)
            missing += 1
            continue
        try:
            if subject not in scan_cache:  # one scan held: the list goes subject by subject
                sv, sf = read_mesh(_one_file(scans / subject, "*.obj", "scan"))
                scan_cache = {subject: (sv, sf, read_pp(_one_file(lmks / subject, "*.pp",
                                                                  "scan landmarks")))}
            pv, pf = read_mesh(found[0])
            pl = read_landmarks(found[1])
        except (OSError, ValueError) as exc:
            log.warning("%s: counted as missing", exc)
            missing += 1
            continue
        distances.append(scan_to_mesh_errors(*scan_cache[subject], pv, pf, pl,
                                             metrical=metrical, unit=unit))
        scored.append(line)
    if not distances:
        raise ValueError(f"{pred_root}: no prediction of the {len(lines)} listed images could be "
                         f"scored ({missing} missing)")
    out_dir = Path(out) if out else pred_root / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    ident = method + ("_metrical" if metrical else "")
    suffix = "distances" if not challenge else f"distances_{challenge}"
    path = out_dir / f"{ident}_computed_{suffix}.npy"
    # NoW's own layout: a dict saved as a 0-d object array (its reader calls .item()).
    np.save(path, {"computed_distances": distances, "num_missing_files": missing,
                   "input_files": np.array(scored)}, allow_pickle=True)
    cat = np.concatenate(distances)
    median, mean = float(np.median(cat)), float(np.mean(cat))
    Path(f"{path}.meanmedian").write_text(f"{median}\n{mean}\n")
    return NowResult(path, median, mean, float(np.std(cat)), len(distances), missing)


def format_result(result: NowResult) -> str:
    """Table 1's row: median, mean and std (mm)."""
    return ("| Median (mm) | Mean (mm) | Std (mm) | images | missing |\n"
            "|---|---|---|---|---|\n"
            f"| {result.median:.3f} | {result.mean:.3f} | {result.std:.3f} | "
            f"{result.num_images} | {result.num_missing} |")
