"""Rendering speed: rasterize + interpolate + texture + antialias of a
FLAME-sized face, ours against jaxrenderer (CPU) and nvdiffrast (CUDA).

Scene: the built-in procedural head (5,238 vertices, 10,344 triangles), a
512^2 random UV albedo, a pinhole camera 0.6 m away with a 30-degree vertical
field of view, one image per yaw spread over [-30, 30] degrees across the
batch. Ours runs `face3d_jax.render.render` (all four primitives, trilinear
mip-mapped albedo, SH shading). Modes: forward (the image), fwd+bwd (the value
and gradient of the mean image w.r.t. the vertices and the albedo).

Peers, in the same run:
- jaxrenderer (PyPI 0.3.2): it needs jax < 0.5, so it runs in its own
  interpreter (`--jaxrenderer-python`, a venv made as BUILD.md says) on the
  same scene (eval/peers/jaxrenderer_peer.py); its textured Phong pipeline
  tests every triangle at every pixel. Its cost is linear in the batch (a vmap
  of one camera), so `--peer-batch` may run it at a smaller batch; per-image
  times are compared.
- nvdiffrast (`import nvdiffrast.torch`, CUDA only): the same four primitives
  on the same clip-space positions, in PyTorch.

Prints one row per (resolution, batch, mode): ms per image for each renderer,
the ratio peer/ours, compile time and peak memory (device memory_stats on an
accelerator; XLA's buffer assignment for the compiled program on CPU).

    python -m face3d_eval.bench_render --resolutions 224 512 --batches 1 8 \
        --jaxrenderer-python .venv-jaxrenderer/bin/python
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import face3d_jax  # noqa: F401
except ImportError:  # run as `python eval/bench_render.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_jax.flame.geometry import vertex_normals  # noqa: E402
from face3d_jax.flame.procedural import default_model  # noqa: E402
from face3d_jax.render import cameras  # noqa: E402
from face3d_jax.render.renderer import PerspectiveCamera, render  # noqa: E402
from face3d_jax.render.views import default_sh_light  # noqa: E402

DISTANCE, VFOV, TEXTURE = 0.6, 30.0, 512
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "jaxrenderer_peer.py"


def make_scene(seed: int = 0):
    """Mesh centred at the origin, per-vertex UVs, a random albedo."""
    model = default_model()
    verts = np.asarray(model.v_template, np.float32)
    return {
        "verts": verts - verts.mean(0),
        "faces": np.asarray(model.faces, np.int32),
        "uv_coords": np.asarray(model.uv_coords, np.float32),
        "uv_faces": np.asarray(model.uv_faces, np.int32),
        "vertex_uv": np.asarray(model.vertex_uv, np.float32),
        "texture": np.random.default_rng(seed).uniform(size=(TEXTURE, TEXTURE, 3)).astype(
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
    rotation, translation = cameras.look_at_face(DISTANCE, batch)
    focal = 0.5 * res / math.tan(math.radians(VFOV) / 2)
    intrinsics = jnp.broadcast_to(jnp.array([focal, focal, res / 2, res / 2]), (batch, 4))
    return PerspectiveCamera(rotation=rotation, translation=translation, intrinsics=intrinsics,
                             resolution=(res, res))


def ours(scene, res, batch, modes, repeats):
    verts = jnp.asarray(yaw_batch(scene["verts"], batch))
    albedo = jnp.broadcast_to(jnp.asarray(scene["texture"]), (batch, TEXTURE, TEXTURE, 3))
    cam, sh = camera(batch, res), default_sh_light(batch)

    def image(v, a):
        return render(v, scene["faces"], scene["uv_coords"], scene["uv_faces"], a, cam,
                      (res, res), sh_coeffs=sh).image

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
        rows[mode] = {"seconds": statistics.median(times), "compile_s": compile_s,
                      "peak_mib": peak_memory_mib(compiled), "covered": covered}
    return rows


def peak_memory_mib(compiled):
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    total = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
             + analysis.output_size_in_bytes)
    return total / 2**20


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
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"jaxrenderer peer failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nvdiffrast_peer(scene, res, batch, modes, repeats):
    """The same four primitives with nvdiffrast on CUDA (not run without a GPU)."""
    import torch
    import nvdiffrast.torch as dr

    dev = torch.device("cuda")
    ctx = dr.RasterizeCudaContext(device=dev)
    cam = camera(batch, res)
    clip = np.asarray(cam.project(jnp.asarray(yaw_batch(scene["verts"], batch))))
    pos = torch.tensor(clip, device=dev, requires_grad=True)
    tex = torch.tensor(np.broadcast_to(scene["texture"], (batch, TEXTURE, TEXTURE, 3)).copy(),
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
        def step():
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["forward", "fwd+bwd"],
                        choices=["forward", "fwd+bwd"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jaxrenderer-python", default=None,
                        help="interpreter of a venv with jaxrenderer (BUILD.md); none: skip")
    parser.add_argument("--peer-batch", type=int, default=None,
                        help="batch for jaxrenderer (default: the same); per-image times compared")
    parser.add_argument("--peer-modes", nargs="+", default=None,
                        help="modes for jaxrenderer (default: --modes)")
    parser.add_argument("--nvdiffrast", action="store_true", help="also run nvdiffrast (CUDA)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    scene = make_scene()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; mesh "
          f"{len(scene['verts'])} vertices, {len(scene['faces'])} triangles; albedo {TEXTURE}^2")
    print(f"{'res':>5} {'batch':>5} {'mode':>8} {'ours ms/img':>12} {'peer':>12} "
          f"{'peer ms/img':>12} {'peer/ours':>9} {'compile s':>9} {'peak MiB':>9}")
    rows = []
    peer_runs = {}  # (res, peer batch) -> result: a fixed --peer-batch runs once per size
    for res in args.resolutions:
        for batch in args.batches:
            mine = ours(scene, res, batch, args.modes, args.repeats)
            peers = {}
            if args.jaxrenderer_python:
                pb = args.peer_batch or batch
                if (res, pb) not in peer_runs:
                    peer_runs[res, pb] = jaxrenderer(args.jaxrenderer_python, scene, res, pb,
                                                     args.peer_modes or args.modes, args.repeats)
                peers["jaxrenderer"] = (pb, peer_runs[res, pb])
            if args.nvdiffrast:
                peers["nvdiffrast"] = (batch, nvdiffrast_peer(scene, res, batch, args.modes,
                                                              args.repeats))
            for mode in args.modes:
                ms = 1000 * mine[mode]["seconds"] / batch
                row = {"resolution": res, "batch": batch, "mode": mode, "ours_ms_per_image": ms,
                       "compile_s": mine[mode]["compile_s"], "peak_mib": mine[mode]["peak_mib"],
                       "covered": mine[mode]["covered"]}
                printed = False
                for name, (pb, result) in peers.items():
                    if "error" in result:
                        print(f"  {name}: {result['error']}")
                        continue
                    if mode not in result:
                        continue
                    peer_ms = 1000 * result[mode]["seconds"] / pb
                    row[f"{name}_ms_per_image"] = peer_ms
                    row[f"{name}_batch"] = pb
                    print(f"{res:>5} {batch:>5} {mode:>8} {ms:>12.1f} {name:>12} {peer_ms:>12.1f} "
                          f"{peer_ms / ms:>8.1f}x {row['compile_s']:>9.1f} "
                          f"{row['peak_mib'] or float('nan'):>9.0f}")
                    printed = True
                if not printed:
                    print(f"{res:>5} {batch:>5} {mode:>8} {ms:>12.1f} {'-':>12} {'-':>12} "
                          f"{'-':>9} {row['compile_s']:>9.1f} "
                          f"{row['peak_mib'] or float('nan'):>9.0f}")
                rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
