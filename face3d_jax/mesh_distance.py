"""Exact distances from points to the surface of a triangle mesh.

What NoW's and REALY's protocols measure: for every scan vertex, the nearest
point on any triangle of a predicted mesh (psbody-mesh's `ScanToMesh`,
trimesh's `nearest.on_surface`). Brute force is points x triangles (10^9 pairs
for a NoW scan); here the work is points x k:

  1. a k-d tree of sample points of the triangles gives each point its k
     nearest samples, and so k candidate triangles. The samples are the
     centroids of the triangles cut into n x n similar pieces, n chosen per
     triangle so that every piece has a centroid-to-corner radius of at most
     r (the median triangle's): large triangles (a scan's filled holes, a
     model's neck) are sampled densely and small ones once;
  2. the exact point-triangle distance to those k triangles (jitted JAX) gives
     a best distance d;
  3. the answer is certified: every point of a triangle lies within r of one
     of its samples, and every sample outside the k is at least D_k (the k-th
     sample distance) away, so nothing outside the candidates is nearer than
     D_k - r. Where d <= D_k - r the answer is exact; the other points are
     queried again with 4k candidates, up to brute force.

So the result is the brute-force answer (up to float32 rounding of distances
taken relative to each point: ~1e-7 of the triangle's extent), whatever the
mesh: degenerate triangles (segments or points) included, which the
point-triangle distance handles by its three edges.

    index = SurfaceIndex(vertices, faces)
    dist, closest, face = index.query(points)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

_CHUNK = 8192  # points per compiled call: bounds memory (chunk x k x 9 floats)
_FIRST_K = 16  # candidates per point on the first pass
_MAX_PIECES = 64  # per triangle edge: bounds the samples of a huge triangle


def _piece_centroids(n: int) -> np.ndarray:
    """Barycentric centroids of the n*n pieces of a triangle cut by n-1 lines
    parallel to each side (all similar to it). Returns (n*n, 3) float64."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    up = (i + j <= n - 1)
    down = (i + j <= n - 2)
    uv = np.concatenate([np.stack([i[up] + 1 / 3, j[up] + 1 / 3], -1),
                         np.stack([i[down] + 2 / 3, j[down] + 2 / 3], -1)]) / n
    return np.concatenate([1 - uv.sum(-1, keepdims=True), uv], axis=-1)


def closest_on_triangles(p, a, b, c):
    """Nearest points on triangles, by the plane projection where it falls
    inside and otherwise the nearest of the three edges (which also covers
    degenerate triangles, whose interior is empty).

    Args:
      p: (..., 3) float32 points.
      a, b, c: (..., 3) float32 triangle corners, broadcast against p.
    Returns:
      ((..., 3) float32 nearest points, (...) float32 squared distances).
    """
    def segment(u, v):
        e = v - u
        ee = jnp.sum(e * e, axis=-1, keepdims=True)
        t = jnp.clip(jnp.sum((p - u) * e, axis=-1, keepdims=True) / jnp.maximum(ee, 1e-30),
                     0.0, 1.0)
        q = u + t * e
        return q, jnp.sum((p - q) ** 2, axis=-1)

    ab, ac = b - a, c - a
    n = jnp.cross(ab, ac)
    nn = jnp.sum(n * n, axis=-1, keepdims=True)
    # Barycentrics of the projection (Cramer's rule with the normal).
    ap = p - a
    v = jnp.sum(jnp.cross(ap, ac) * n, axis=-1, keepdims=True) / jnp.maximum(nn, 1e-30)
    w = jnp.sum(jnp.cross(ab, ap) * n, axis=-1, keepdims=True) / jnp.maximum(nn, 1e-30)
    inside = (v >= 0) & (w >= 0) & (v + w <= 1) & (nn > 0)
    proj = a + v * ab + w * ac
    best_q = proj
    best_d = jnp.where(inside[..., 0], jnp.sum((p - proj) ** 2, axis=-1), jnp.inf)
    for u, x in ((a, b), (b, c), (c, a)):
        q, d = segment(u, x)
        closer = d < best_d
        best_q = jnp.where(closer[..., None], q, best_q)
        best_d = jnp.where(closer, d, best_d)
    return best_q, best_d


@jax.jit
def _nearest_of_candidates(vertices, faces, points, cand):
    """Nearest of candidate triangles.

    vertices (V, 3) float32, faces (F, 3) int32, points (n, 3) float32,
    cand (n, k) int32 triangle indices. Returns ((n, 3) float32 nearest
    points, (n,) float32 squared distances, (n,) int32 winning triangles)."""
    tri = vertices[faces[cand]]  # (n, k, 3, 3)
    q, d = closest_on_triangles(points[:, None], tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])
    j = jnp.argmin(d, axis=1)
    rows = jnp.arange(points.shape[0])
    return q[rows, j], d[rows, j], cand[rows, j]


@dataclasses.dataclass(frozen=True)
class SurfaceIndex:
    """A triangle mesh prepared for nearest-surface queries.

    Args:
      vertices: (V, 3) float (any unit; float64 kept for the geometry).
      faces: (F, 3) int vertex indices, F >= 1.
    """

    vertices: np.ndarray
    faces: np.ndarray
    tree: cKDTree = dataclasses.field(repr=False)  # of the samples
    owner: np.ndarray = dataclasses.field(repr=False)  # (S,) int64: each sample's triangle
    r_max: float  # every point of a triangle is this close to one of its samples
    centre: np.ndarray  # (3,) float64: float32 work is done relative to it
    device_vertices: jax.Array = dataclasses.field(repr=False)  # (V, 3) float32, centred
    device_faces: jax.Array = dataclasses.field(repr=False)  # (F, 3) int32

    @classmethod
    def build(cls, vertices, faces) -> SurfaceIndex:
        vertices = np.asarray(vertices, np.float64)
        faces = np.asarray(faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or not len(vertices):
            raise ValueError(f"mesh vertices have shape {vertices.shape}, expected (V, 3)")
        if faces.ndim != 2 or faces.shape[1] != 3 or not len(faces):
            raise ValueError(f"mesh faces have shape {faces.shape}, expected (F, 3), F >= 1")
        if not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"mesh faces have dtype {faces.dtype}, expected integers")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError(f"mesh faces index vertices {faces.min()}..{faces.max()}, the mesh "
                             f"has {len(vertices)}")
        if not np.all(np.isfinite(vertices)):
            raise ValueError("mesh vertices hold NaN or infinite values")
        tri = vertices[faces]
        centroids = tri.mean(axis=1)
        radius = np.max(np.linalg.norm(tri - centroids[:, None], axis=-1), axis=1)
        target = float(np.median(radius))
        # At least one piece: a triangle collapsed to a point has radius 0.
        pieces = np.ones(len(faces), np.int64) if target == 0 else np.clip(
            np.ceil(radius / target).astype(np.int64), 1, _MAX_PIECES)
        samples, owner = [centroids], [np.arange(len(faces))]
        for n in np.unique(pieces[pieces > 1]):
            which = np.nonzero(pieces == n)[0]
            bary = _piece_centroids(int(n))  # (n*n, 3)
            samples.append(np.einsum("pc,fcx->fpx", bary, tri[which]).reshape(-1, 3))
            owner.append(np.repeat(which, len(bary)))
        r_max = float(np.max(radius / pieces))
        # Centred before float32: rounding then scales with the mesh's extent
        # (~1e-7 of it), not with its distance from the origin.
        centre = vertices.mean(axis=0)
        return cls(vertices, faces.astype(np.int64), cKDTree(np.concatenate(samples)),
                   np.concatenate(owner), r_max, centre,
                   jnp.asarray(vertices - centre, jnp.float32), jnp.asarray(faces, jnp.int32))

    def query(self, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nearest point of the surface to each point.

        Args:
          points: (N, 3) float, the mesh's unit.
        Returns:
          (distance (N,) float64, nearest point (N, 3) float64, triangle
          index (N,) int64).
        """
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points have shape {points.shape}, expected (N, 3)")
        if not np.all(np.isfinite(points)):
            raise ValueError("points hold NaN or infinite values")
        n, num_faces = len(points), len(self.faces)
        dist = np.zeros(n)
        closest = np.zeros((n, 3))
        face = np.zeros(n, np.int64)
        todo = np.arange(n)
        num_samples = len(self.owner)
        k = min(_FIRST_K, num_samples)
        while len(todo):
            if k >= num_samples:  # brute force over every triangle
                cand = np.broadcast_to(np.arange(num_faces), (len(todo), num_faces))
                dist[todo], closest[todo], face[todo] = self._exact(points[todo], cand)
                break
            cand_d, cand = self.tree.query(points[todo], k=k, workers=-1)
            cand_d, cand = cand_d.reshape(len(todo), k), self.owner[cand.reshape(len(todo), k)]
            d, q, f = self._exact(points[todo], cand)
            dist[todo], closest[todo], face[todo] = d, q, f
            # Certified where no triangle without a sample among the k can be nearer.
            todo = todo[d > cand_d[:, -1] - self.r_max]
            k = min(4 * k, num_samples)
        return dist, closest, face

    def _exact(self, points, cand):
        """Exact nearest of candidate triangles (n, k) int for points (n, 3)."""
        n, k = cand.shape
        out = (np.empty(n), np.empty((n, 3)), np.empty(n, np.int64))
        # Calls padded to a power of two (at most _CHUNK x _FIRST_K / k points):
        # a few compiled shapes serve every query.
        chunk = min(max(1, _CHUNK * _FIRST_K // k), max(256, 1 << (n - 1).bit_length()))
        local = points - self.centre
        for s in range(0, n, chunk):
            p, c = local[s:s + chunk], cand[s:s + chunk]
            m = len(p)
            if m < chunk:
                p = np.concatenate([p, np.repeat(p[-1:], chunk - m, axis=0)])
                c = np.concatenate([c, np.repeat(c[-1:], chunk - m, axis=0)])
            q, d, f = jax.device_get(_nearest_of_candidates(
                self.device_vertices, self.device_faces, jnp.asarray(p, jnp.float32),
                jnp.asarray(c, jnp.int32)))
            out[0][s:s + m], out[1][s:s + m], out[2][s:s + m] = d[:m], q[:m], f[:m]
        return np.sqrt(out[0]), out[1] + self.centre, out[2]


def surface_distance(points, vertices, faces) -> np.ndarray:
    """Unsigned distance of each point to a mesh's surface.

    Args:
      points: (N, 3) float; vertices: (V, 3) float; faces: (F, 3) int.
    Returns:
      (N,) float64, the points' unit.
    """
    return SurfaceIndex.build(vertices, faces).query(points)[0]
