"""NoW's protocol (face3d_eval.now) and the exact surface distance under it
(face3d_jax.mesh_distance), on cases whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from face3d_eval import now
from face3d_jax import metrics
from face3d_jax.flame.procedural import default_model
from face3d_jax.mesh_distance import SurfaceIndex


def _segment_d2(p, a, b):
    e = b - a
    t = np.clip(np.sum((p - a) * e, -1) / np.maximum(np.sum(e * e, -1), 1e-300), 0, 1)
    return np.sum((p - a - t[..., None] * e) ** 2, -1)


def _ericson_d2(p, a, b, c):
    """Squared distance point-triangle by Ericson's Voronoi-region tests
    (Real-Time Collision Detection, 5.1.5), float64; degenerate triangles
    (no area: their points are their edges') by their edges."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.sum(ab * ap, -1), np.sum(ac * ap, -1)
    bp = p - b
    d3, d4 = np.sum(ab * bp, -1), np.sum(ac * bp, -1)
    cp = p - c
    d5, d6 = np.sum(ab * cp, -1), np.sum(ac * cp, -1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v, w = vb / denom, vc / denom
    inside = (va >= 0) & (vb >= 0) & (vc >= 0) & (denom > 0)
    q = a + v[..., None] * ab + w[..., None] * ac
    face = np.where(inside, np.sum((p - q) ** 2, -1), np.inf)
    edges = np.minimum(np.minimum(_segment_d2(p, a, b), _segment_d2(p, b, c)),
                       _segment_d2(p, c, a))
    return np.minimum(face, edges)


def brute_force(points, vertices, faces):
    """Every point against every triangle in float64 NumPy, by an algorithm
    other than the one under test."""
    tri = np.asarray(vertices, np.float64)[faces]
    out = []
    for s in range(0, len(points), 256):
        p = np.asarray(points[s:s + 256], np.float64)[:, None]
        out.append(np.min(_ericson_d2(p, tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]),
                          axis=1))
    return np.sqrt(np.concatenate(out))


def bumpy_mesh(seed=0):
    """A deformed sphere (radius 100) with a few huge triangles and several
    degenerate ones (a repeated corner, three collinear corners)."""
    rng = np.random.default_rng(seed)
    m = trimesh.creation.icosphere(subdivisions=3, radius=100.0)
    v = m.vertices * (1 + 0.1 * np.sin(3 * m.vertices[:, :1] / 100.0))
    v = np.concatenate([v, [[0, 0, 300], [300, 0, 0], [0, 300, 0], [10, 10, 10], [20, 20, 20]]])
    n = len(m.vertices)
    f = np.concatenate([m.faces, [[n, n + 1, n + 2], [0, 0, 1], [n + 3, n + 4, 0],
                                  [n + 3, n + 4, n + 3]]])
    # The collinear triangle: corners (10,10,10), (20,20,20) and a point on their line.
    v = np.concatenate([v, [[30, 30, 30]]])
    f = np.concatenate([f, [[n + 3, n + 4, n + 5]]])
    pts = rng.normal(size=(3000, 3))
    pts = pts / np.linalg.norm(pts, axis=1, keepdims=True) * rng.uniform(50, 400, (3000, 1))
    return v, f, pts


# The float32 work is done relative to the mesh's centre: rounding errors are
# ~1e-7 of the coordinates' size (a few hundred here), so 1e-4 absolute is
# ~4 ulp of the largest coordinate with room for the sqrt and the sums.
ATOL = 1e-4


def test_distance_is_brute_force():
    v, f, pts = bumpy_mesh()
    d, q, face = SurfaceIndex.build(v, f).query(pts)
    np.testing.assert_allclose(d, brute_force(pts, v, f), atol=ATOL)
    # The reported point is on the reported triangle, at the reported distance.
    np.testing.assert_allclose(np.linalg.norm(pts - q, axis=1), d, atol=ATOL)
    own = np.array([brute_force(q[i:i + 1], v, f[face[i]][None])[0] for i in range(0, 3000, 97)])
    np.testing.assert_allclose(own, 0.0, atol=ATOL)


def test_distance_matches_trimesh():
    pytest.importorskip("rtree")  # trimesh's closest point needs it
    v, f, pts = bumpy_mesh(1)
    # trimesh's answer on the proper triangles (it drops nothing with process=False).
    _, d_ref, _ = trimesh.Trimesh(v, f, process=False).nearest.on_surface(pts)
    np.testing.assert_allclose(SurfaceIndex.build(v, f).query(pts)[0], d_ref, atol=ATOL)


def test_distance_far_from_the_origin():
    # A mesh a kilometre away (in mm): centring keeps float32 exact enough.
    v, f, pts = bumpy_mesh(2)
    shift = np.array([1e6, -2e6, 5e5])
    d = SurfaceIndex.build(v + shift, f).query(pts + shift)[0]
    np.testing.assert_allclose(d, brute_force(pts, v, f), atol=ATOL)


def test_distance_bad_input():
    v, f, _ = bumpy_mesh()
    with pytest.raises(ValueError, match="index vertices"):
        SurfaceIndex.build(v, f + len(v))
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        SurfaceIndex.build(v, f).query(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        SurfaceIndex.build(np.where(v > 90, np.nan, v), f)


def test_procrustes_recovers_a_similarity():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(7, 3))
    rot = Rotation.from_rotvec([0.4, -1.0, 0.3]).as_matrix()
    x = 2.5 * y @ rot.T + np.array([1.0, -2.0, 3.0])
    t = now.procrustes(x, y)
    np.testing.assert_allclose(t(y), x, atol=1e-10)
    assert t.scale == pytest.approx(2.5)
    # A mirrored target: NoW's "best" takes the reflection; False does not.
    mirror = x * np.array([-1.0, 1.0, 1.0])
    assert np.linalg.det(now.procrustes(mirror, y).rotation) < 0
    np.testing.assert_allclose(now.procrustes(mirror, y)(y), mirror, atol=1e-10)
    assert np.linalg.det(now.procrustes(mirror, y, reflection=False).rotation) > 0


def test_crop_is_nows_sphere():
    # Landmarks placed so that centre = (0, 3, 0) and radius = 1.4 (8 + 10)/2 = 12.6.
    lmk = np.array([[-4, 10, 0], [-1, 10, 0], [1, 10, 0], [4, 10, 0], [0, 0, 0], [-2, -3, 0],
                    [2, -3, 0]], float)
    pts = np.array([[0, 3, 12.5], [0, 3, 12.7], [0, 3 - 12.5, 0], [12.7, 3, 0]])
    np.testing.assert_array_equal(now.crop_scan(pts, lmk), [0, 2])


@pytest.fixture(scope="module")
def face():
    """The procedural FLAME template in millimetres, its 7 NoW points, and a
    dense 'scan' of the same surface (one subdivision: vertices on it)."""
    model = default_model()
    v = np.asarray(model.v_template, np.float64) * 1000.0
    f = np.asarray(model.faces, np.int64)
    lmk = np.asarray(metrics.now_landmarks(model, v[None].astype(np.float32)))[0]
    scan = trimesh.Trimesh(v, f, process=False).subdivide()
    return v, f, lmk.astype(np.float64), scan


def _offset_scan(scan, d, seed=0):
    """Scan vertices moved off the surface by +-d (random signs) along their
    normals: the alignment cannot absorb a zero-mean pattern, so each vertex's
    true error is ~d."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], len(scan.vertices))
    return scan.vertices + scan.vertex_normals * (d * signs)[:, None]


def _similarity():
    return now.Similarity(0.0011, Rotation.from_rotvec([0.3, -0.2, 0.1]).as_matrix(),
                          np.array([0.05, -0.02, 0.3]))


def test_known_similarity_and_offset(face):
    v, f, lmk, scan = face
    d = 0.5  # mm
    sv = _offset_scan(scan, d)
    s = _similarity()  # the prediction in metres, 10% too large, turned and moved
    noisy = s(lmk) + np.random.default_rng(1).normal(0, 0.002, (7, 3))  # 2 mm landmark noise
    dist, aligned = now.scan_to_mesh_errors(sv, scan.faces, lmk, s(v), f, noisy,
                                            return_alignment=True)
    assert len(dist) == len(now.crop_scan(sv, lmk))
    # A vertex moved d along its normal is d from the surface up to the
    # surface's curvature over d (radii >> 0.5 mm on a face): within 5%.
    assert np.median(dist) == pytest.approx(d, rel=0.05)
    # The alignment undoes the similarity: from 2 mm of landmark noise to a
    # residual far below the offset (the noise pattern is zero-mean).
    assert np.linalg.norm(aligned - v, axis=1).mean() < 0.2 * d
    every = slice(None, None, 20)  # a sample keeps the float64 reference quick
    np.testing.assert_allclose(dist[every], brute_force(sv[now.crop_scan(sv, lmk)][every],
                                                        aligned, f), atol=ATOL)
    # The metrical protocol keeps the 10% error of size: the errors grow.
    metrical = now.scan_to_mesh_errors(sv, scan.faces, lmk, s(v), f, noisy, metrical=True,
                                       unit="m")
    assert np.median(metrical) > 2 * d
    exact = now.Similarity(0.001, s.rotation, s.translation)
    metrical = now.scan_to_mesh_errors(sv, scan.faces, lmk, exact(v), f, exact(lmk),
                                       metrical=True, unit="m")
    assert np.median(metrical) == pytest.approx(d, rel=0.05)


def test_missing_part_and_degenerate_triangles(face):
    v, f, lmk, scan = face
    sv = _offset_scan(scan, 0.3, seed=2)
    keep = now.crop_scan(sv, lmk)
    # The prediction lacks the triangles of one cheek.
    centre = v[f].mean(axis=1)
    hole = (centre[:, 0] > lmk[3, 0]) & (centre[:, 1] < lmk[4, 1])
    dist, aligned = now.scan_to_mesh_errors(sv, scan.faces, lmk, v, f[~hole], lmk,
                                            return_alignment=True)
    near = np.asarray(SurfaceIndex.build(v, f[hole]).query(sv[keep])[0]) < 1.0
    assert near.sum() > 100
    # Scan vertices over the hole measure to the rest of the mesh: far larger.
    assert np.median(dist[near]) > 5 * np.median(dist[~near])
    # The errors are those of the returned alignment...
    every = slice(None, None, 20)
    np.testing.assert_allclose(dist[every], brute_force(sv[keep][every], aligned, f[~hole]),
                               atol=ATOL)
    # ... whose objective is no worse than the true placement's (exact
    # landmarks start the refinement there, and no step raises it). The
    # hole pulls the least-squares fit off the truth, so no closer answer
    # is known.
    at_truth = SurfaceIndex.build(v, f[~hole]).query(sv[keep])[0]
    assert np.mean(dist**2) <= np.mean(at_truth**2) * (1 + 1e-9)
    # Zero-area triangles added to the prediction change nothing.
    extra = np.array([[0, 0, 1], [2, 2, 2], [5, 6, 5]])
    again = now.scan_to_mesh_errors(sv, scan.faces, lmk, v, np.concatenate([f[~hole], extra]),
                                    lmk)
    np.testing.assert_allclose(again, dist, atol=ATOL)


PP = """<!DOCTYPE PickedPoints>
<PickedPoints>
 <DocumentData>
  <DataFileName name="scan.obj"/>
  <templateName name=""/>
 </DocumentData>
{points}</PickedPoints>
"""


def write_pp(path, lmk):
    points = "".join(f' <point x="{x}" y="{y}" z="{z}" active="1" name="{i}"/>\n'
                     for i, (x, y, z) in enumerate(lmk))
    path.write_text(PP.format(points=points))


def test_readers(tmp_path, face):
    _, _, lmk, _ = face
    write_pp(tmp_path / "a.pp", lmk)
    np.testing.assert_allclose(now.read_pp(tmp_path / "a.pp"), lmk, rtol=1e-12)
    write_pp(tmp_path / "six.pp", lmk[:6])
    with pytest.raises(ValueError, match=r"six.pp: landmarks of shape \(6, 3\)"):
        now.read_pp(tmp_path / "six.pp")
    (tmp_path / "bad.pp").write_text("<PickedPoints><point x='a'/>")
    with pytest.raises(ValueError, match="bad.pp: not a MeshLab .pp file"):
        now.read_pp(tmp_path / "bad.pp")
    np.save(tmp_path / "l.npy", lmk[None])
    np.testing.assert_allclose(now.read_landmarks(tmp_path / "l.npy"), lmk)
    np.savetxt(tmp_path / "l.txt", lmk)
    np.testing.assert_allclose(now.read_landmarks(tmp_path / "l.txt"), lmk)
    np.save(tmp_path / "l8.npy", np.zeros((8, 3)))
    with pytest.raises(ValueError, match=r"l8.npy: landmarks of shape \(8, 3\)"):
        now.read_landmarks(tmp_path / "l8.npy")
    with pytest.raises(FileNotFoundError, match="no such mesh file"):
        now.read_mesh(tmp_path / "none.obj")


def test_evaluate_writes_nows_files(tmp_path, face):
    v, f, lmk, scan = face
    root, preds = tmp_path / "now", tmp_path / "preds"
    lines = []
    for subject, d in (("FaMoS_1", 0.4), ("FaMoS_2", 0.8)):
        (root / "scans" / subject).mkdir(parents=True)
        (root / "scans_lmks_onlypp" / subject).mkdir(parents=True)
        trimesh.Trimesh(_offset_scan(scan, d), scan.faces, process=False).export(
            root / "scans" / subject / "scan.obj")
        write_pp(root / "scans_lmks_onlypp" / subject / "scan_picked_points.pp", lmk)
        for challenge, name in (("multiview_neutral", "IMG_1.jpg"), ("selfie", "IMG_2.jpg")):
            lines.append(f"{subject}/{challenge}/{name}")
    (root / "imagepathsvalidation.txt").write_text("\n".join(lines) + "\n")
    s = _similarity()

    def put(line, landmarks=None, mesh=True):
        folder = preds / Path(line).parent
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(line).stem
        if mesh:
            trimesh.Trimesh(s(v), f, process=False).export(folder / f"{stem}.ply")
        if landmarks is not None:
            np.savetxt(folder / f"{stem}.txt", landmarks)

    put(lines[0], s(lmk))
    put(lines[1], s(lmk)[:5])  # wrong landmark count: missing, the run goes on
    put(lines[2], s(lmk), mesh=False)  # no mesh: missing
    put(lines[3], s(lmk))
    res = now.evaluate(preds, root, progress=False)
    assert (res.num_images, res.num_missing) == (2, 2)
    assert res.path == preds / "results" / "RECON_computed_distances.npy"
    # Read as NoW's cumulative_errors.py reads it.
    data = np.load(res.path, allow_pickle=True, encoding="latin1").item()
    errors = np.hstack(data["computed_distances"])
    assert data["num_missing_files"] == 2
    assert list(data["input_files"]) == [lines[0], lines[3]]
    median, mean = map(float, Path(f"{res.path}.meanmedian").read_text().split())
    assert median == pytest.approx(np.median(errors)) and mean == pytest.approx(np.mean(errors))
    # Each subject's scan is off the surface by its own d.
    assert np.median(data["computed_distances"][0]) == pytest.approx(0.4, rel=0.05)
    assert np.median(data["computed_distances"][1]) == pytest.approx(0.8, rel=0.05)
    # One challenge only, and the metrical file name.
    res = now.evaluate(preds, root, challenge="selfie", metrical=True, progress=False)
    assert res.path.name == "RECON_metrical_computed_distances_selfie.npy"
    assert (res.num_images, res.num_missing) == (1, 1)
    with pytest.raises(ValueError, match="challenge 'smile'"):
        now.evaluate(preds, root, challenge="smile", progress=False)
    with pytest.raises(FileNotFoundError, match="imagepathstest.txt"):
        now.evaluate(preds, root, image_set="test", progress=False)
