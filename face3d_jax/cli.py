"""The `face3d` command: parses arguments and calls the library.

    face3d demo [--out DIR] [--num N] [--seed S] [--model PATH]
    face3d render [--yaw DEG ...] [--resolution N] [--out DIR] [--seed S] [--model PATH]
    face3d assets make-default --out DIR [--seed S]
    face3d assets import-flame PATH --out DIR
"""

from __future__ import annotations

import argparse
import sys


def _demo(args):
    from face3d_jax.demo import run_demo

    run_demo(args.out, num_faces=args.num, seed=args.seed, model_path=args.model,
             render_resolution=args.render_resolution)


def _render(args):
    from face3d_jax.render.views import write_yaw_renders

    for path in write_yaw_renders(args.out, yaws=args.yaw, resolution=args.resolution,
                                  seed=args.seed, model_path=args.model):
        print(f"wrote {path}")


def _make_default(args):
    from face3d_jax.flame import default_model, write_flame_files

    for path in write_flame_files(default_model(seed=args.seed), args.out):
        print(f"wrote {path}")


def _import_flame(args):
    from face3d_jax.flame.io import import_flame

    print(f"wrote {import_flame(args.path, args.out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face3d", description="Generative 3D faces (FLAME + AlbedoGAN) in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="decode random faces from the default model and "
                                       "write them as meshes")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--num", type=int, default=4, help="number of faces (default: 4)")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    demo.add_argument("--model", default=None,
                      help="a FLAME model (pkl, converted npz or folder) instead of the "
                           "built-in procedural default")
    demo.add_argument("--render-resolution", type=int, default=256,
                      help="size of the yaw renders of the first face (default: 256)")
    demo.set_defaults(func=_demo)

    rend = sub.add_parser("render", help="render the default face (or a random one) at "
                                         "several head yaws to PNGs")
    rend.add_argument("--yaw", type=float, nargs="+", default=[0, 15, -15, 30, -30, 45, -45],
                      help="yaw angles in degrees (default: the paper's Table 4 set)")
    rend.add_argument("--resolution", type=int, default=512, help="image size (default: 512)")
    rend.add_argument("--out", default="render_out", help="output folder")
    rend.add_argument("--seed", type=int, default=None,
                      help="render a random face from this seed instead of the mean face")
    rend.add_argument("--model", default=None, help="a FLAME model instead of the default")
    rend.set_defaults(func=_render)

    assets = sub.add_parser("assets", help="face model assets")
    asub = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    make = asub.add_parser("make-default", help="write the procedural default model in "
                                                "FLAME's file formats")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="seed of the random basis fields")
    make.set_defaults(func=_make_default)
    imp = asub.add_parser("import-flame", help="convert official FLAME files into the "
                                               "project's npz plus a manifest")
    imp.add_argument("path", help="generic_model.pkl, or a folder with the model, its "
                                  "landmark embeddings and UV template")
    imp.add_argument("--out", required=True, help="output folder")
    imp.set_defaults(func=_import_flame)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        # Bad input ends with one line a person can act on, not a traceback.
        print(f"face3d: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
