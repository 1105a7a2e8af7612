"""Rendering speed: rasterize + interpolate + texture + antialias of a
FLAME-sized face, ours against jaxrenderer (CPU) and nvdiffrast (CUDA).

Scene: the built-in procedural head (5,238 vertices, 10,344 triangles), a
random UV albedo (512^2 by default), a pinhole camera 0.6 m away with a
30-degree vertical field of view, one image per yaw spread over [-30, 30]
degrees across the batch. Ours runs `face3d_jax.render.render` (all four
primitives, trilinear mip-mapped albedo, SH shading). Modes: forward (the
image), fwd+bwd (the value and gradient of the mean image w.r.t. the vertices
and the albedo). Ours is compiled ahead of timing, run once, then timed
`repeats` times with block_until_ready (median). On an accelerator, ours also
runs with the Pallas rasterizer (`backend="pallas"`, compiled, not
interpreted); on the CPU that kernel only runs in Pallas's interpreter, a
test path, so it is not timed there.

Peers, in the same run:
- jaxrenderer (PyPI 0.3.2): it needs jax < 0.5, so it runs in its own
  interpreter (`--jaxrenderer-python`, a venv made as BUILD.md says) on the
  same scene (eval/peers/jaxrenderer_peer.py); its textured Phong pipeline
  tests every triangle at every pixel. Its cost is linear in the batch (a vmap
  of one camera), so `peer_batch` may run it at a smaller batch; per-image
  times are compared.
- nvdiffrast (`import nvdiffrast.torch`, CUDA only): the same four primitives
  on the same clip-space positions, in PyTorch.
- Embree (Open3D's `RaycastingScene`, `pip install 'face3d-jax[torch]'` or
  `pip install open3d-cpu`), in mode "visibility" only: a hand-tuned C++ BVH
  ray caster against our rasterizer alone. Ours: `rasterize(pos, tri, (H, W),
  grad_db=False)` (ids, perspective-correct barycentrics and z/w per pixel);
  Embree: `cast_rays` with one ray per pixel centre through the same pinhole
  camera (t_hit, primitive ids, barycentric uvs per ray), the mesh in the
  world frame and each image's yaw applied to its rays, so one BVH serves the
  batch. The BVH is built once, outside the timing (its build time is in the
  row's details); the rays are made once. Both sides do visibility and
  barycentrics, neither shades. The row's details give the fraction of pixels
  whose triangle ids agree (> 99.99% on the default face; the rest lie on
  shared edges, which float32 decides either way).
A peer that cannot run here gives a row saying why.

Times are ms per image; peak memory is the device's peak on an accelerator,
XLA's buffer assignment for the compiled program on the CPU. In mode
"visibility", ours and Embree are timed alternately in the same loop (the
median of each), so load from other processes hits both alike.

    face3d bench render [--size smallest|default] --jaxrenderer-python .venv-jaxrenderer/bin/python
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_eval.harness import Options, PeerUnavailable, Row, import_peer
from face3d_eval.timing import ours_memory
from face3d_jax.flame.geometry import vertex_normals
from face3d_jax.flame.procedural import default_model
from face3d_jax.render import cameras
from face3d_jax.render.renderer import PerspectiveCamera, render
from face3d_jax.render.views import default_sh_light

DISTANCE, VFOV = 0.6, 30.0
MODES = ("forward", "fwd+bwd")
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "jaxrenderer_peer.py"

# jaxrenderer tests every triangle at every pixel: at 512^2 about a minute per
# image on two cores, hence a peer batch of 1 by default (per-image times).
SIZES = {
    "smallest": {"resolutions": (32,), "batches": (1,), "texture": 64, "repeats": 2,
                 "peer_batch": 1, "visibility": (32,)},
    "default": {"resolutions": (224, 512), "batches": (1, 8), "texture": 512, "repeats": 3,
                "peer_batch": 1, "visibility": (224, 512, 1024)},
    # gpu_check's rows: both our rasterizers and nvdiffrast at the same batch.
    "gpu": {"resolutions": (512,), "batches": (1, 8), "texture": 512, "repeats": 5},
}


def make_scene(texture: int, seed: int = 0):
    """Mesh centred at the origin (float32), per-vertex UVs, a random (texture,
    texture, 3) float32 albedo."""
    model = default_model()
    verts = np.asarray(model.v_template, np.float32)
    return {
        "verts": verts - verts.mean(0),
        "faces": np.asarray(model.faces, np.int32),
        "uv_coords": np.asarray(model.uv_coords, np.float32),
        "uv_faces": np.asarray(model.uv_faces, np.int32),
        "vertex_uv": np.asarray(model.vertex_uv, np.float32),
        "texture": np.random.default_rng(seed).uniform(size=(texture, texture, 3)).astype(
            np.float32),
    }


def yaw_batch(verts, batch):
    """(B, V, 3): the mesh turned by yaws spread over [-30, 30] degrees."""
    yaws = np.radians(np.linspace(-30.0, 30.0, batch)) if batch > 1 else np.zeros(1)
    c, s = np.cos(yaws), np.sin(yaws)
    rot = np.zeros((batch, 3, 3), np.float32)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1, -s, c
    return np.einsum("bij,vj->bvi", rot, verts).astype(np.float32)


def camera(batch, res):
    """The benchmark's pinhole camera for `batch` images of res x res."""
    rotation, translation = cameras.look_at_face(DISTANCE, batch)
    focal = 0.5 * res / math.tan(math.radians(VFOV) / 2)
    intrinsics = jnp.broadcast_to(jnp.array([focal, focal, res / 2, res / 2]), (batch, 4))
    return PerspectiveCamera(rotation=rotation, translation=translation, intrinsics=intrinsics,
                             resolution=(res, res))


def ours(scene, res, batch, modes, repeats, backend="jax"):
    """{mode: seconds per call, compile_s, peak_mib, memory, covered} for our render()."""
    verts = jnp.asarray(yaw_batch(scene["verts"], batch))
    albedo = jnp.broadcast_to(jnp.asarray(scene["texture"]),
                              (batch,) + scene["texture"].shape)
    cam, sh = camera(batch, res), default_sh_light(batch)

    def image(v, a):
        return render(v, scene["faces"], scene["uv_coords"], scene["uv_faces"], a, cam,
                      (res, res), sh_coeffs=sh, backend=backend).image

    fns = {"forward": jax.jit(image),
           "fwd+bwd": jax.jit(jax.value_and_grad(lambda v, a: jnp.mean(image(v, a)),
                                                 argnums=(0, 1)))}
    rows = {}
    for mode in modes:
        start = time.perf_counter()
        compiled = fns[mode].lower(verts, albedo).compile()
        compile_s = time.perf_counter() - start
        out = jax.block_until_ready(compiled(verts, albedo))
        covered = float(jnp.mean(jnp.any(out[0] > 0, axis=-1))) if mode == "forward" else None
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(verts, albedo))
            times.append(time.perf_counter() - start)
        peak, label = ours_memory(compiled)
        rows[mode] = {"seconds": statistics.median(times), "compile_s": compile_s,
                      "peak_mib": peak, "memory": label, "covered": covered}
    return rows


def jaxrenderer(python, scene, res, batch, modes, repeats):
    """Runs the peer in its own interpreter; returns its JSON, or an error line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.npz"
        verts = scene["verts"]
        normals = np.asarray(vertex_normals(jnp.asarray(verts)[None], scene["faces"])[0])
        np.savez(path, verts=verts, normals=normals, uvs=scene["vertex_uv"],
                 faces=scene["faces"], texture=scene["texture"], distance=DISTANCE, vfov=VFOV)
        cmd = [python, str(PEER_SCRIPT), str(path), "--resolution", str(res), "--batch",
               str(batch), "--repeats", str(repeats), "--modes", *modes]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:  # no such interpreter
            return {"error": f"cannot start {python}: {exc.strerror}"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nvdiffrast_peer(scene, res, batch, modes, repeats):
    """The same four primitives with nvdiffrast on CUDA; PeerUnavailable without
    CUDA or nvdiffrast."""
    torch = import_peer("torch", "pip install 'face3d-jax[torch]'")
    if not torch.cuda.is_available():
        raise PeerUnavailable("needs CUDA (none here)")
    dr = import_peer("nvdiffrast.torch", "pip install nvdiffrast, on a CUDA machine")
    texture = scene["texture"].shape[0]

    dev = torch.device("cuda")
    ctx = dr.RasterizeCudaContext(device=dev)
    cam = camera(batch, res)
    clip = np.asarray(cam.project(jnp.asarray(yaw_batch(scene["verts"], batch))))
    pos = torch.tensor(clip, device=dev, requires_grad=True)
    tex = torch.tensor(np.broadcast_to(scene["texture"], (batch, texture, texture, 3)).copy(),
                       device=dev, requires_grad=True)
    tri = torch.tensor(scene["faces"], device=dev)
    uv_tri = torch.tensor(scene["uv_faces"], device=dev)
    uv = torch.tensor(np.stack([scene["uv_coords"][:, 0], 1 - scene["uv_coords"][:, 1]], 1),
                      device=dev).contiguous()

    def image():
        rast, db = dr.rasterize(ctx, pos, tri, (res, res), grad_db=True)
        tc, tc_da = dr.interpolate(uv, rast, uv_tri, rast_db=db, diff_attrs="all")
        color = dr.texture(tex, tc, tc_da, filter_mode="linear-mipmap-linear",
                           boundary_mode="clamp")
        return dr.antialias(color * (rast[..., 3:] > 0), rast, pos, tri)

    rows = {}
    for mode in modes:
        def step(mode=mode):
            if mode == "forward":
                with torch.no_grad():
                    return image()
            loss = image().mean()
            loss.backward()
            return loss

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows[mode] = {"seconds": statistics.median(times),
                      "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    return rows


def embree_rays(batch, res):
    """(B, res, res, 6) float32 rays (origin, direction) through the pixel
    centres of `camera(batch, res)`, in the frame of the unturned mesh: image
    b's yaw (`yaw_batch`) is applied to its rays instead of to the mesh."""
    cam = camera(batch, res)
    yaws = np.radians(np.linspace(-30.0, 30.0, batch)) if batch > 1 else np.zeros(1)
    c, s = np.cos(yaws), np.sin(yaws)
    turn = np.zeros((batch, 3, 3))
    turn[:, 0, 0], turn[:, 0, 2], turn[:, 1, 1], turn[:, 2, 0], turn[:, 2, 2] = c, s, 1, -s, c
    # camera point = R (turn p) + t: the mesh-frame camera has rotation R turn.
    rotation = np.asarray(cam.rotation, np.float64) @ turn
    translation = np.asarray(cam.translation, np.float64)
    fx, fy, cx, cy = (np.asarray(cam.intrinsics, np.float64)[:, k, None, None] for k in range(4))
    centre = np.arange(res) + 0.5  # pixel (i, j) has its centre at (j + 0.5, i + 0.5)
    d = np.stack(np.broadcast_arrays((centre[None, None, :] - cx) / fx,
                                     (centre[None, :, None] - cy) / fy, np.ones((batch, 1, 1))),
                 axis=-1)
    directions = np.einsum("brc,bhwr->bhwc", rotation, d)
    origins = -np.einsum("brc,br->bc", rotation, translation)[:, None, None]
    return np.concatenate(np.broadcast_arrays(origins, directions), axis=-1).astype(np.float32)


def visibility_peer(scene, res, batch, repeats):
    """Ours (`rasterize` without rast_db) against Embree's `cast_rays`, timed
    alternately; PeerUnavailable without open3d. Returns (ours, embree) dicts
    of seconds per call and details."""
    from face3d_kernels import rasterize

    o3d = import_peer("open3d", "pip install 'face3d-jax[torch]' (or pip install open3d-cpu)")
    start = time.perf_counter()
    raycaster = o3d.t.geometry.RaycastingScene()
    raycaster.add_triangles(o3d.core.Tensor(np.ascontiguousarray(scene["verts"])),
                            o3d.core.Tensor(scene["faces"].astype(np.uint32)))
    rays = o3d.core.Tensor(embree_rays(batch, res))
    hits = raycaster.cast_rays(rays)  # the BVH is built lazily, at the first cast
    build_s = time.perf_counter() - start
    pos = camera(batch, res).project(jnp.asarray(yaw_batch(scene["verts"], batch)))
    fn = jax.jit(lambda p: rasterize(p, scene["faces"], (res, res), grad_db=False)[0])
    start = time.perf_counter()
    compiled = fn.lower(pos).compile()
    compile_s = time.perf_counter() - start
    rast = np.asarray(jax.block_until_ready(compiled(pos)))
    peer_ids = hits["primitive_ids"].numpy().astype(np.int64)
    peer_ids = np.where(peer_ids == o3d.t.geometry.RaycastingScene.INVALID_ID, 0, peer_ids + 1)
    agree = float(np.mean(peer_ids == rast[..., 3].astype(np.int64)))

    def embree():
        out = raycaster.cast_rays(rays)
        return out["t_hit"].numpy(), out["primitive_ids"].numpy(), out["primitive_uvs"].numpy()

    ours_t, peer_t = [], []
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        jax.block_until_ready(compiled(pos))
        ours_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        embree()
        peer_t.append(time.perf_counter() - start)
    peak, label = ours_memory(compiled)
    return ({"seconds": statistics.median(ours_t), "compile_s": compile_s, "peak_mib": peak,
             "memory": label, "covered": float(np.mean(rast[..., 3] > 0))},
            {"seconds": statistics.median(peer_t), "build_s": build_s, "ids_agree": agree,
             "covered": float(np.mean(peer_ids > 0))})


def visibility_rows(scene, resolutions, batches, repeats) -> list[Row]:
    """One row per (resolution, batch): ours against Embree, ms per image."""
    rows = []
    for res in resolutions:
        for batch in batches:
            case = f"{res}^2 B={batch} visibility, per image"
            try:
                mine, peer = visibility_peer(scene, res, batch, repeats)
            except PeerUnavailable as exc:
                rows.append(Row("render", case, None, "embree", peer_note=str(exc)))
                continue
            rows.append(Row(
                "render", case, 1000 * mine["seconds"] / batch, "embree",
                1000 * peer["seconds"] / batch, peak_mib=mine["peak_mib"], memory=mine["memory"],
                details={"resolution": res, "batch": batch, "mode": "visibility",
                         "compile_s": mine["compile_s"], "covered": mine["covered"],
                         "peer_covered": peer["covered"], "ids_agree": peer["ids_agree"],
                         "peer_build_s": peer["build_s"]}))
    return rows


def run(options: Options, resolutions, batches, texture, repeats, peer_batch=None,
        modes=MODES, visibility=()) -> list[Row]:
    """One row per (resolution, batch, mode, peer); ms per image."""
    scene = make_scene(texture)
    # Our backends: the Pallas rasterizer only where it compiles (not the CPU's interpreter).
    backends = ["jax"] + (["pallas"] if jax.default_backend() != "cpu" else [])
    peer_runs = {}  # (res, peer batch) -> jaxrenderer's result: one run per size
    rows = []
    for res in resolutions:
        for batch in batches:
            peers = {}
            if options.jaxrenderer_python:
                pb = peer_batch or batch
                if (res, pb) not in peer_runs:
                    peer_runs[res, pb] = jaxrenderer(options.jaxrenderer_python, scene, res, pb,
                                                     modes, repeats)
                peers["jaxrenderer"] = (pb, peer_runs[res, pb])
            else:
                peers["jaxrenderer"] = (batch, {"error": "not run (give --jaxrenderer-python, "
                                                         "BUILD.md)"})
            try:
                peers["nvdiffrast"] = (batch, nvdiffrast_peer(scene, res, batch, modes, repeats))
            except PeerUnavailable as exc:
                peers["nvdiffrast"] = (batch, {"error": str(exc)})
            for backend in backends:
                mine = ours(scene, res, batch, modes, repeats, backend)
                for mode in modes:
                    ms = 1000 * mine[mode]["seconds"] / batch
                    for name, (pb, result) in peers.items():
                        ok = "error" not in result and mode in result
                        note = result.get("error") or (None if ok else f"no {mode} run")
                        details = {"resolution": res, "batch": batch, "mode": mode,
                                   "backend": backend, "texture": texture,
                                   "compile_s": mine[mode]["compile_s"],
                                   "covered": mine[mode]["covered"]}
                        if ok:
                            details.update(peer_batch=pb, peer_peak_mib=result[mode].get(
                                "peak_mib"), peer_covered=result.get("covered"))
                        rows.append(Row(
                            "render", f"{res}^2 B={batch} {mode}"
                            + ("" if backend == "jax" else f" ({backend})") + ", per image",
                            ms, name, 1000 * result[mode]["seconds"] / pb if ok else None,
                            note, peak_mib=mine[mode]["peak_mib"], memory=mine[mode]["memory"],
                            details=details))
    return rows + visibility_rows(scene, visibility, batches, repeats)
