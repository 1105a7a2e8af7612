"""The jaxrenderer side of `bench_render`: runs in its own interpreter.

jaxrenderer 0.3.2 (the newest on PyPI) needs jax < 0.5 (it sets the removed
`jax_array` option at import), so it cannot share a process with this project's
jax. `bench_render` writes the scene to an npz and runs this file with the
interpreter given by `--jaxrenderer-python` (a venv made as BUILD.md says), in
the same run. It imports only numpy, jax and jaxrenderer.

Scene: the same mesh (vertices, per-vertex normals and UVs, triangles) and the
same albedo texture; a perspective camera at the same distance and vertical
field of view; jaxrenderer's textured Phong shader (its only textured one; the
shading arithmetic is a few flops per pixel, the visibility is the cost).
Batch: jaxrenderer renders one camera per call (its buffers are per image), so
an image batch is `jax.vmap` over the camera position: the batch shares one
compiled program, as ours does.

Prints one JSON object: per mode, the median seconds per call over --repeats,
the compile seconds, and the covered fraction of the first image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from renderer import (CameraParameters, LightParameters, Model, ModelObject,  # noqa: E402
                      Renderer)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scene", help="npz with verts, normals, uvs, faces, texture, distance, vfov")
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--modes", nargs="+", default=["forward", "fwd+bwd"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    scene = np.load(args.scene)
    res, batch = args.resolution, args.batch
    distance, vfov = float(scene["distance"]), float(scene["vfov"])
    # Yaws spread over the batch as in bench_render: the camera circles the face.
    yaws = np.radians(np.linspace(-30.0, 30.0, batch)) if batch > 1 else np.zeros(1)
    eyes = jnp.asarray(np.stack([distance * np.sin(yaws), np.zeros(batch),
                                 distance * np.cos(yaws)], axis=1), jnp.float32)

    def image(verts, texture, eye):
        model = Model.create(verts=verts, norms=jnp.asarray(scene["normals"]),
                             uvs=jnp.asarray(scene["uvs"]), faces=jnp.asarray(scene["faces"]),
                             diffuse_map=texture)
        camera = CameraParameters(viewWidth=res, viewHeight=res, near=0.05, far=10.0,
                                  hfov=vfov, vfov=vfov, position=eye,
                                  target=jnp.zeros(3), up=jnp.array([0.0, 1.0, 0.0]))
        return Renderer.get_camera_image(objects=[ModelObject(model=model)],
                                         light=LightParameters(), camera=camera,
                                         width=res, height=res)

    verts = jnp.asarray(scene["verts"], jnp.float32)
    texture = jnp.asarray(scene["texture"], jnp.float32)
    forward = jax.jit(lambda v, t, e: jax.vmap(image, in_axes=(None, None, 0))(v, t, e))

    def loss(v, t, e):
        return jnp.mean(forward(v, t, e))

    backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    result = {"resolution": res, "batch": batch}
    for mode in args.modes:
        fn = forward if mode == "forward" else backward
        start = time.perf_counter()
        out = jax.block_until_ready(fn(verts, texture, eyes))
        compile_s = time.perf_counter() - start
        if mode == "forward":
            img = np.asarray(out[0])
            result["covered"] = float(np.mean(np.any(np.abs(img - 1.0) > 1e-6, axis=-1)))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(verts, texture, eyes))
            times.append(time.perf_counter() - start)
        result[mode] = {"seconds": statistics.median(times), "first_call_s": compile_s}
    result["jax"] = jax.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
