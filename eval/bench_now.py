"""NoW-sized scan-to-mesh work: our exact surface distance against trimesh's
closest point, CPU.

The scan: `points` samples of the procedural FLAME template's surface (mm),
each moved off it by up to 1 mm (a NoW scan has ~100k vertices); the
prediction: the template itself (5,238 vertices, 10,344 triangles), landmark-
aligned with 2 mm of landmark noise.

Cases:
  closest point    every scan point to the prediction's surface, index
                   building included (a prediction is queried by one scan).
                   Ours: `face3d_jax.mesh_distance` (k-d tree of samples,
                   certified, jitted point-triangle distance); trimesh: its
                   `nearest.on_surface` (an R-tree of triangle boxes).
  NoW per image    `face3d_eval.now.scan_to_mesh_errors` whole: crop,
                   Procrustes, the scan-to-mesh refinement, the distances.
                   The peer runs the same protocol with trimesh's closest
                   point in place of ours, so the ratio is what the surface
                   distance buys a NoW evaluation.
Both sides give the same distances (the max difference is recorded). Times are
medians of interleaved calls, the first (compiling) call excluded.

    face3d bench now [--size smallest|default]
"""

from __future__ import annotations

import numpy as np

from face3d_eval import now
from face3d_eval.harness import Options, PeerUnavailable, Row, import_peer
from face3d_eval.timing import interleaved_medians
from face3d_jax.mesh_distance import SurfaceIndex

SIZES = {
    "smallest": {"points": 5_000, "repeats": 1, "warmup": 1, "budget": 5.0},
    "default": {"points": 100_000, "repeats": 5, "warmup": 1, "budget": 60.0},
    # gpu_check's row: the same CPU-bound work (the tree is scipy's) beside a GPU.
    "gpu": {"points": 100_000, "repeats": 3, "warmup": 1, "budget": 20.0},
}


class TrimeshIndex:
    """trimesh's closest point behind `SurfaceIndex`'s query interface."""

    def __init__(self, vertices, faces):
        import trimesh

        self.vertices, self.faces = np.asarray(vertices, np.float64), np.asarray(faces)
        self.mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)

    def query(self, points):
        closest, dist, face = self.mesh.nearest.on_surface(np.asarray(points, np.float64))
        return dist, closest, face


def nowlike_case(points: int, seed: int = 0):
    """(scan points (N, 3), scan landmarks (7, 3), prediction vertices, faces,
    prediction landmarks) in mm."""
    import trimesh

    from face3d_jax import metrics
    from face3d_jax.flame.procedural import default_model

    model = default_model()
    v = np.asarray(model.v_template, np.float64) * 1000.0
    f = np.asarray(model.faces, np.int64)
    lmk = np.asarray(metrics.now_landmarks(model, v[None].astype(np.float32)))[0]
    mesh = trimesh.Trimesh(v, f, process=False)
    rng = np.random.default_rng(seed)
    pts, face = trimesh.sample.sample_surface(mesh, points, seed=seed)
    pts = pts + mesh.face_normals[face] * rng.uniform(-1.0, 1.0, (points, 1))
    return pts, lmk.astype(np.float64), v, f, lmk + rng.normal(0, 2.0, (7, 3))


def run(options: Options, points, repeats, warmup, budget) -> list[Row]:
    """Two rows: closest point and NoW per image, ms, ours vs trimesh."""
    del options  # scipy's tree and XLA use the process's cores
    scan, scan_lmk, v, f, pred_lmk = nowlike_case(points)
    try:
        import_peer("rtree", "pip install rtree (trimesh's closest point needs it)")
        peer, note = "trimesh closest point", None
    except PeerUnavailable as exc:
        peer, note = "trimesh", str(exc)

    def ours_closest():
        return SurfaceIndex.build(v, f).query(scan)[0]

    def peer_closest():
        return TrimeshIndex(v, f).query(scan)[0]

    def protocol(index_cls):
        def one():
            keep = now.crop_scan(scan, scan_lmk)
            aligned = now.procrustes(scan_lmk, pred_lmk)(v)
            return now.refine(scan[keep], index_cls(aligned, f))

        return one

    ours_now, peer_now = protocol(SurfaceIndex.build), protocol(TrimeshIndex)
    rows = []
    for case, ours, theirs in (("closest point", ours_closest, peer_closest),
                               ("NoW per image", ours_now, peer_now)):
        fns = [ours] + ([] if note else [theirs])
        times = interleaved_medians(fns, repeats, warmup, budget)
        details = {"scan_points": points, "triangles": len(f)}
        if not note:
            a, b = ours(), theirs()
            if case == "closest point":
                details["max_abs_diff_mm"] = float(np.max(np.abs(a - b)))
            else:
                details.update(ours_iterations=a[2], peer_iterations=b[2],
                               cropped_points=len(a[1]),
                               median_diff_mm=float(abs(np.median(a[1]) - np.median(b[1]))))
        rows.append(Row("now", f"{case}, {points:,} scan points", times[0] * 1e3, peer,
                        None if note else times[1] * 1e3, note, details=details))
    return rows
