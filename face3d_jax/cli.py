"""The `face3d` command: parses arguments and calls the library.

    face3d demo [--out DIR] [--num N] [--seed S] [--model PATH]
    face3d render [--yaw DEG ...] [--resolution N] [--out DIR] [--seed S] [--model PATH]
    face3d assets make-default --out DIR [--seed S]
    face3d assets import-flame PATH --out DIR
    face3d landmarks IMAGE... --out FILE.json [--draw OUT.png]
    face3d embed IMAGE... --out FILE.npy [--model DAT]
    face3d extract-albedo IMAGE --out DIR [--size N] [--model PATH]
    face3d convert stylegan2 IN.pt --out DIR [--reader auto|torch]
    face3d sample DIR (--z Z.npy | --seed S) [--num N] [--truncation T]
                  [--noise const|random|none] --out IMG.png
    face3d teacher [--num N] [--resolution R] --out DIR [--seed S] [--albedo-size A]
                   [--displacement-size D] [--truncation T] [--batch B] [--model PATH]
    face3d data generate --source teacher|stylegan2 [--checkpoint DIR] --identities N
                   [--edits 11] --out DIR [--seed S] [--landmarks auto|detected|truth]
                   [--boundaries DIR] [--resolution R] [--albedo-size A] [--fit-steps K]
    face3d identity-head --workdir DIR [--config tiny] [--set KEY=VALUE ...]
    face3d train --workdir DIR [--config tiny] [--set KEY=VALUE ...] [--distributed]
    face3d report --workdir DIR --out REPORT.html [--step N] [--faces K]
    face3d generate --workdir RUN (--seed S [--num N] | --z Z.npy | --w W.npy)
                    [--truncation T] [--step K] [--video] --out DIR
    face3d edit --workdir RUN (--seed S | --w W.npy) --attribute NAME|FILE.npy
                --alpha A [A ...] [--truncation T] [--step K] [--video] --out DIR
    face3d edit --workdir RUN (--seed S | --w W.npy) --text PROMPT --clip CLIP.pt
                [--steps 300] [--lr 0.1] [--l2-lambda 0.008] [--id-lambda 0.005] --out DIR
    face3d reconstruct IMAGE... --workdir RUN --out DIR [--steps 1000] [--w-plus] [--step K]
    face3d predict now --workdir RUN --images DIR [--list FILE] [--step K] --out DIR
    face3d eval now --predictions DIR --gt NOW_ROOT [--image-set val|test] [--list FILE]
                    [--challenge C] [--metrical --unit mm|cm|m] [--method NAME] [--out DIR]
    face3d eval realy --predictions DIR --realy ROOT --template FLAME.obj --keypoints FLAME.txt
                      [--scale metrical_scale.txt] [--mask MASK.txt] [--out DIR]
    face3d eval identity --workdir RUN [--num 32] [--seed S] [--step K] [--out FILE.json]
    face3d eval diversity --workdir RUN [--num 1000] [--seed 0] [--step K] [--out FILE.json]
    face3d eval teacher --workdir RUN [--step K] [--no-now] [--out FILE.json]
    face3d bench [flame|render|stylegan2|gan-step|iresnet|identity|train-step|now|clip|all ...]
                 [--size smallest|default] [--json PATH] [--threads N]
                 [--jaxrenderer-python PY] [--gpu-check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _convert_stylegan2(args):
    from face3d_jax.convert.stylegan2 import convert_rosinality

    result = convert_rosinality(args.path, args.out, reader=args.reader)
    d = "none" if result.discriminator_params is None else f"{result.discriminator_params:,}"
    print(f"converted StyleGAN2 {result.config.resolution}x{result.config.resolution}: "
          f"G {result.generator_params:,} parameters, D {d} parameters -> {args.out}")


def _sample(args):
    from face3d_jax.convert.stylegan2 import load_config
    from face3d_jax.nets.stylegan2_sample import load_z, sample_images

    z = None if args.z is None else load_z(args.z, load_config(args.folder).style_dim)
    for path in sample_images(args.folder, args.out, z=z, seed=args.seed, num=args.num,
                              truncation=args.truncation, noise_mode=args.noise):
        print(f"wrote {path}")


def _landmarks(args):
    from face3d_jax.faces.commands import write_landmarks

    write_landmarks(args.images, args.out, draw=args.draw)


def _embed(args):
    from face3d_jax.faces.commands import write_embeddings

    write_embeddings(args.images, args.out, model_path=args.model)


def _teacher(args):
    from face3d_jax.teacher.commands import write_teacher_samples

    written = write_teacher_samples(
        args.out, num=args.num, resolution=args.resolution, seed=args.seed,
        albedo_size=args.albedo_size, displacement_size=args.displacement_size,
        truncation=args.truncation, batch=args.batch, model_path=args.model)
    print(f"wrote {len(written) - 1} PNGs and {written[-1]}")


def _extract_albedo(args):
    from face3d_jax.extract_albedo import write_albedo_files

    for path in write_albedo_files(args.image, args.out, model_path=args.model, size=args.size):
        print(f"wrote {path}")


def _data_generate(args):
    from face3d_jax.data.dataset import GenerateConfig, generate

    cfg = GenerateConfig(
        source=args.source, checkpoint=args.checkpoint, identities=args.identities,
        edits=args.edits, resolution=args.resolution, albedo_size=args.albedo_size,
        fit_size=args.fit_size, fit_steps=args.fit_steps, truncation=args.truncation,
        boundaries=args.boundaries, landmarks=args.landmarks, seed=args.seed,
        identities_per_shard=args.identities_per_shard, batch=args.batch, model=args.model)
    r = generate(cfg, args.out)
    print(f"wrote {r.images} images ({r.skipped_no_face} skipped: no face; dlib found none in "
          f"{r.not_detected}) to {r.dataset_dir}; {r.shards_generated} shards generated, "
          f"{r.shards_skipped} resumed; {r.generation_images_per_s:.2f} images/s generated, "
          f"{r.albedo_images_per_s:.2f} images/s albedo")


def _bench(args):
    # eval/ is imported here only: the library never depends on it (DESIGN.md).
    if args.gpu_check:
        from face3d_eval.gpu_check import run_gpu_check

        run_gpu_check(args.json or "gpu_check.json")
        return
    from face3d_eval.harness import Options, failed, run_benchmarks

    rows = run_benchmarks(args.names, args.size, Options(args.threads, args.jaxrenderer_python),
                          json_path=args.json)
    if failed(rows):
        raise RuntimeError(f"{len(failed(rows))} benchmark(s) failed (rows marked FAILED)")


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

    conv = sub.add_parser("convert", help="convert PyTorch checkpoints into the project's "
                                          "parameters")
    csub = conv.add_subparsers(dest="convert_command", required=True, metavar="MODEL")
    sg2 = csub.add_parser("stylegan2", help="a rosinality stylegan2-pytorch .pt (g_ema, g, d, "
                                            "latent_avg) -> npz + json")
    sg2.add_argument("path", help="the .pt checkpoint")
    sg2.add_argument("--out", required=True, help="output folder")
    sg2.add_argument("--reader", choices=("auto", "torch"), default="auto",
                     help="auto: restricted reader without torch (default); torch: "
                          "torch.load(weights_only=True)")
    sg2.set_defaults(func=_convert_stylegan2)

    samp = sub.add_parser("sample", help="images from a converted StyleGAN2 folder")
    samp.add_argument("folder", help="output folder of `face3d convert stylegan2`")
    src = samp.add_mutually_exclusive_group(required=True)
    src.add_argument("--z", help="a .npy of z, (512,) or (B, 512)")
    src.add_argument("--seed", type=int, help="draw z from this PRNG seed")
    samp.add_argument("--num", type=int, default=1, help="images to draw with --seed")
    samp.add_argument("--truncation", type=float, default=1.0,
                      help="truncation psi toward the mean latent (default: 1, none)")
    samp.add_argument("--noise", choices=("const", "random", "none"), default="const",
                      help="const: the checkpoint's noise buffers, image = f(z) (default)")
    samp.add_argument("--out", required=True, help="PNG path (several: _0000, _0001, ...)")
    samp.set_defaults(func=_sample)

    lmk = sub.add_parser("landmarks", help="detect faces and their 68 landmarks (dlib) "
                                           "and save them as JSON")
    lmk.add_argument("images", nargs="+", help="image files")
    lmk.add_argument("--out", required=True, help="output JSON file")
    lmk.add_argument("--draw", default=None,
                     help="also draw the landmarks into this PNG (several images: "
                          "one PNG each, named after it)")
    lmk.set_defaults(func=_landmarks)
    emb = sub.add_parser("embed", help="128-d identity descriptor of the largest face "
                                       "of each image (dlib's ResNet, our Flax port)")
    emb.add_argument("images", nargs="+", help="image files")
    emb.add_argument("--out", required=True, help="output .npy, (N, 128) float32; NaN "
                                                  "rows for images without a face")
    emb.add_argument("--model", default=None,
                     help="dlib_face_recognition_resnet_model_v1.dat (default: the one "
                          "in the face-recognition-models package)")
    emb.set_defaults(func=_embed)

    alb = sub.add_parser("extract-albedo", help="pseudo-ground-truth UV albedo of the largest "
                                                "face in a photograph (Sec. 3.1-3.2)")
    alb.add_argument("image", help="image file")
    alb.add_argument("--out", required=True, help="output folder: texture.png, shading.png "
                                                  "(stored halved: 1.0 is mid-grey), albedo.png, "
                                                  "crop.png, fit.npz")
    alb.add_argument("--size", type=int, default=512, help="UV map size (default: 512)")
    alb.add_argument("--model", default=None, help="a FLAME model instead of the default")
    alb.set_defaults(func=_extract_albedo)

    teach = sub.add_parser("teacher", help="render samples of the synthetic teacher world "
                                           "(PNGs) with their 3D truth (truth.npz)")
    teach.add_argument("--num", type=int, default=8, help="number of samples (default: 8)")
    teach.add_argument("--resolution", type=int, default=256, help="image size (default: 256)")
    teach.add_argument("--out", required=True, help="output folder")
    teach.add_argument("--seed", type=int, default=0,
                       help="seed of the world and of the samples (default: 0)")
    teach.add_argument("--albedo-size", type=int, default=256,
                       help="UV albedo size (default: 256; the paper's is 1024)")
    teach.add_argument("--displacement-size", type=int, default=256,
                       help="UV displacement size (default: 256)")
    teach.add_argument("--truncation", type=float, default=1.0,
                       help="truncation psi toward the mean w (default: 1, none)")
    teach.add_argument("--batch", type=int, default=4, help="samples per compiled call")
    teach.add_argument("--model", default=None, help="a FLAME model instead of the default")
    teach.set_defaults(func=_teacher)

    data = sub.add_parser("data", help="training data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    gen = dsub.add_parser("generate", help="Sec. 5.1's dataset (identities x InterFaceGAN "
                                           "edits, crops, landmarks, pseudo-GT albedo) as a "
                                           "TFDS ArrayRecord dataset; resumable")
    gen.add_argument("--source", choices=("teacher", "stylegan2"), default="teacher",
                     help="the teacher world (default) or a converted StyleGAN2")
    gen.add_argument("--checkpoint", default=None,
                     help="with --source stylegan2: a `face3d convert stylegan2` folder")
    gen.add_argument("--identities", type=int, required=True, help="number of identities")
    gen.add_argument("--edits", type=int, default=11,
                     help="images per identity, the original included (default: 11)")
    gen.add_argument("--out", required=True, help="output folder (rerun to resume)")
    gen.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    gen.add_argument("--landmarks", choices=("auto", "detected", "truth"), default="auto",
                     help="landmarks for crop and fit: auto = truth for the teacher, "
                          "detected (dlib) for StyleGAN2")
    gen.add_argument("--boundaries", default=None,
                     help="folder of pre-computed InterFaceGAN boundaries <attribute>.npy "
                          "(smile, jaw_open, yaw, pitch); default: fitted")
    gen.add_argument("--resolution", type=int, default=256,
                     help="teacher image size (default: 256; StyleGAN2: its own)")
    gen.add_argument("--albedo-size", type=int, default=256, help="UV albedo size (default: 256)")
    gen.add_argument("--fit-size", type=int, default=512,
                     help="crop size of the landmark fit and texture extraction (default: 512)")
    gen.add_argument("--fit-steps", type=int, default=300, help="landmark-fit Adam steps")
    gen.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default: 1)")
    gen.add_argument("--identities-per-shard", type=int, default=16,
                     help="identities per resumable shard (default: 16)")
    gen.add_argument("--batch", type=int, default=8, help="images per compiled call")
    gen.add_argument("--model", default=None, help="a FLAME model instead of the default")
    gen.set_defaults(func=_data_generate)

    tr = sub.add_parser("train", help="the main job: AlbedoGAN pre-training and alternating "
                                      "descent of shape and albedo (resumable)")
    tr.add_argument("--config", default="tiny",
                    help="'tiny' (2-core CPU, default), 'small' (tiny for 2 hours), 'paper', "
                         "or a .py with get_config()")
    tr.add_argument("--workdir", required=True,
                    help="run folder: data, checkpoints, metrics.jsonl, tensorboard/ (rerun "
                         "to resume)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set schedule.total_steps=100 "
                         "(repeatable; VALUE is a Python literal or a string)")
    tr.add_argument("--distributed", action="store_true",
                    help="call jax.distributed.initialize() first (multi-host)")
    tr.set_defaults(func=_train)

    ih = sub.add_parser("identity-head", help="fit F's teacher-world head of a run into "
                                              "WORKDIR/identity_head.npz (face3d train does "
                                              "it when missing), or check the one there")
    ih.add_argument("--config", default="tiny", help="'tiny' (default), 'paper' or a .py")
    ih.add_argument("--workdir", required=True, help="the run's folder")
    ih.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (as for train)")
    ih.set_defaults(func=_identity_head)

    rep = sub.add_parser("report", help="one self-contained HTML page about a run: metric "
                                        "curves, evaluation table, held-out images and a 3D "
                                        "viewer of generated faces (opens from file://)")
    rep.add_argument("--workdir", required=True, help="the run's folder")
    rep.add_argument("--out", required=True, help="the .html file to write")
    rep.add_argument("--step", type=int, default=None,
                     help="the checkpoint to draw faces from (default: the last)")
    rep.add_argument("--faces", type=int, default=3,
                     help="generated faces in the 3D viewer (default: 3; 0 for none)")
    rep.set_defaults(func=_report)

    def run_args(p, what):
        p.add_argument("--workdir", required=True, help="a `face3d train` run folder")
        p.add_argument("--step", type=int, default=None,
                       help="the checkpoint to use (default: the last)")
        p.add_argument("--truncation", type=float, default=None,
                       help="psi of the source's mapping for seeds and z (default: the "
                            "run's data.generate.truncation)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--video", action="store_true", help=what)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--seed", type=int, help="z ~ N(0, I) from jax.random.key(seed)")
        g.add_argument("--w", default=None, help="a .npy of w: (B, 512), (B, L, 512) or (512,)")
        return g

    gen = sub.add_parser("generate", help="3D faces of a trained run from seeds, z or w: GLB, "
                                          "OBJ+MTL+albedo PNG, 16-bit displacement PNG, "
                                          "renders at the paper's yaws, codes (.npz)")
    run_args(gen, "also an MP4 turntable per face").add_argument(
        "--z", default=None, help="a .npy of z: (B, 512)")
    gen.add_argument("--num", type=int, default=1, help="faces from --seed on (default 1)")
    gen.set_defaults(func=_generate)

    ed = sub.add_parser("edit", help="InterFaceGAN edit of one face of a trained run: w + "
                                     "alpha n per alpha, the 3D face and a strip of renders")
    run_args(ed, "also an MP4 of the edit swept from the first alpha to the last")
    ed.add_argument("--attribute", default=None,
                    help="a boundary the run's dataset fitted (smile, jaw_open, yaw, pitch) "
                         "or an InterFaceGAN .npy ((1, 512), unit norm)")
    ed.add_argument("--alpha", type=float, nargs="+", default=None,
                    help="the edit strengths, e.g. -3 0 3")
    ed.add_argument("--text", default=None,
                    help="a prompt instead of a boundary: StyleCLIP's latent optimisation "
                         "of w+ (Sec. 5.5), e.g. \"a smiling face\"; needs --clip")
    ed.add_argument("--clip", default=None,
                    help="CLIP ViT weights for --text: OpenAI's released ViT-B-32.pt "
                         "(TorchScript, read without running its code) or a torch.save'd state "
                         "dict with OpenAI's or open_clip's key names (e.g. open_clip's "
                         "ViT-B-32 'openai')")
    ed.add_argument("--steps", type=int, default=300, help="--text: Adam steps (default 300)")
    ed.add_argument("--lr", type=float, default=0.1, help="--text: peak learning rate")
    ed.add_argument("--l2-lambda", type=float, default=0.008,
                    help="--text: weight of ||w - w0||^2 (StyleCLIP's 0.008)")
    ed.add_argument("--id-lambda", type=float, default=0.005,
                    help="--text: weight of F's identity loss to the original (0: off)")
    ed.set_defaults(func=_edit)

    rec = sub.add_parser("reconstruct", help="3D faces of photographs: E_shape on DECA's crop "
                                             "(dlib), w by GAN inversion against the run's "
                                             "image source, then generate's outputs")
    rec.add_argument("images", nargs="+", metavar="IMAGE",
                     help="photographs, aligned as the source's images are (the inversion's "
                          "target is the centre square, resized)")
    rec.add_argument("--workdir", required=True, help="a `face3d train` run folder")
    rec.add_argument("--step", type=int, default=None, help="the checkpoint (default: last)")
    rec.add_argument("--out", required=True, help="output folder")
    rec.add_argument("--steps", type=int, default=1000, help="inversion steps (default 1000)")
    rec.add_argument("--lr", type=float, default=0.1, help="Adam's peak learning rate")
    rec.add_argument("--w-plus", action="store_true", help="one w row per layer (w+)")
    rec.add_argument("--pixel-weight", type=float, default=1.0,
                     help="weight of the pixel MSE beside the perceptual distance")
    rec.set_defaults(func=_reconstruct)

    predict = sub.add_parser("predict", help="a run's predictions in a benchmark's format")
    psub = predict.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    pnow = psub.add_parser("now", help="NoW: the neutral mesh of E_shape's shape code (OBJ) "
                                       "and NoW's 7 points (.npy) per image")
    pnow.add_argument("--workdir", required=True, help="a `face3d train` run folder")
    pnow.add_argument("--images", required=True,
                      help="the images' folder (NoW: NoW_Dataset/final_release_version/"
                           "iphone_pictures)")
    pnow.add_argument("--list", default=None,
                      help="image paths relative to --images, one per line (NoW's "
                           "imagepathsvalidation.txt); default: every image below")
    pnow.add_argument("--step", type=int, default=None, help="the checkpoint (default: last)")
    pnow.add_argument("--out", required=True, help="the predictions' folder")
    pnow.set_defaults(func=_predict_now)

    ev = sub.add_parser("eval", help="the paper's evaluations: benchmark protocols and "
                                     "its tables on a run")
    esub = ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    enow = esub.add_parser("now", help="NoW's protocol (now_evaluation's compute_error.py, "
                                       "no psbody-mesh): its result files and Table 1's row")
    enow.add_argument("--predictions", required=True,
                      help="<subject>/<challenge>/<IMG>.obj|.ply with <IMG>.npy|.txt landmarks")
    enow.add_argument("--gt", required=True,
                      help="NoW's dataset folder (image lists, scans/, scans_lmks_onlypp/)")
    enow.add_argument("--image-set", default="val", choices=("val", "test"))
    enow.add_argument("--list", default=None, help="an image list in place of the set's")
    enow.add_argument("--challenge", default="",
                      help="one of multiview_neutral, multiview_expressions, "
                           "multiview_occlusions, selfie (default: all)")
    enow.add_argument("--metrical", action="store_true",
                      help="NoW's metrical protocol: no scale fitted")
    enow.add_argument("--unit", default="m", choices=("mm", "cm", "m"),
                      help="the predictions' unit, for --metrical (default m)")
    enow.add_argument("--method", default="RECON", help="NoW's method identifier (file names)")
    enow.add_argument("--out", default=None,
                      help="the results folder (default: <predictions>/results)")
    enow.set_defaults(func=_eval_now)

    erealy = esub.add_parser("realy", help="REALY's region-aware protocol (7-keypoint "
                                           "alignment, per-region ICP, the bidirectional "
                                           "NICP step): Table 2's row")
    erealy.add_argument("--predictions", required=True,
                        help="<id>[_<name>].obj meshes, all in the template's topology")
    erealy.add_argument("--realy", required=True,
                        help="REALY's data (REALY_HIFI3D_keypoints/, REALY_scan_region/)")
    erealy.add_argument("--template", required=True,
                        help="the topology's template mesh REALY provides (data/FLAME.obj)")
    erealy.add_argument("--keypoints", required=True,
                        help="its 85 barycentric keypoints (REALY's data/FLAME.txt)")
    erealy.add_argument("--scale", default=None,
                        help="REALY's metrical_scale.txt (default: <realy>/metrical_scale.txt)")
    erealy.add_argument("--mask", default=None,
                        help="REALY's optional template vertex mask (one 0/1 per vertex): "
                             "the triangles the error step measures to")
    erealy.add_argument("--out", default=None, help="default: <predictions>/realy")
    erealy.set_defaults(func=_eval_realy)

    def run_args(p, what):
        p.add_argument("--workdir", required=True, help="a `face3d train` run folder")
        p.add_argument("--step", type=int, default=None, help="the checkpoint (default: last)")
        p.add_argument("--out", default=None,
                       help=f"the JSON (default: <workdir>/eval/{what}.json, which "
                            "`face3d report` shows)")

    eid = esub.add_parser("identity", help="Table 4's form: F's similarity of each held-out "
                                           "source and its 3D face rendered at the same pose, "
                                           "0, +-15, +-30, +-45 degrees, ours beside the "
                                           "pseudo-ground-truth, naive texture, mean albedo")
    run_args(eid, "identity")
    eid.add_argument("--num", type=int, default=32, help="held-out identities (default 32)")
    eid.add_argument("--seed", type=int, default=None,
                     help="their draw (default: the run's eval.seed, the trainer's)")
    eid.set_defaults(func=_eval_identity)
    ediv = esub.add_parser("diversity", help="Table 3's form: the mean vertex distance over "
                                             "all pairs of N generated meshes, beside the "
                                             "teacher's true meshes of the same w")
    run_args(ediv, "diversity")
    ediv.add_argument("--num", type=int, default=1000, help="meshes (default 1000, the paper's)")
    ediv.add_argument("--seed", type=int, default=0, help="the z draw (default 0)")
    ediv.set_defaults(func=_eval_diversity)
    eteach = esub.add_parser("teacher", help="the trainer's held-out evaluation of any "
                                             "checkpoint, plus NoW's protocol on the true "
                                             "meshes")
    run_args(eteach, "teacher")
    eteach.add_argument("--no-now", action="store_true", help="skip the NoW-protocol figures")
    eteach.set_defaults(func=_eval_teacher)

    bench = sub.add_parser("bench", help="benchmarks against their peers (PyTorch, smplx, "
                                         "dlib, jaxrenderer, nvdiffrast): one markdown table "
                                         "and one JSON")
    bench.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                       help="flame, render, stylegan2, gan-step, iresnet, identity, "
                            "train-step, now, clip, or all (default)")
    bench.add_argument("--size", default="default",
                       help="smallest (seconds each: what the tests run) or default "
                            "(the figures to quote)")
    bench.add_argument("--json", default=None, help="also write the rows as JSON")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch.set_num_threads (XLA uses every usable core; restrict "
                            "both with taskset)")
    bench.add_argument("--jaxrenderer-python", default=None,
                       help="interpreter of a venv with jaxrenderer, the render peer on CPU "
                            "(BUILD.md); without it that row says it was not run")
    bench.add_argument("--gpu-check", action="store_true",
                       help="the first GPU session's check: GPU-only tests and every GPU "
                            "benchmark row in one JSON (--json, default gpu_check.json)")
    bench.set_defaults(func=_bench)
    return parser


def _log_to_stderr(name: str = "face3d_train") -> None:
    import logging

    # Our own handler: TFDS/absl configure the root logger on import. Added
    # once, so a second command in one process does not print twice.
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _identity_head(args) -> None:
    from face3d_train.configs import apply_overrides, load
    from face3d_train.identity import ensure_identity_head

    _log_to_stderr()
    head = ensure_identity_head(apply_overrides(load(args.config), args.set), args.workdir)
    if head is None:
        print("the config asks for no identity head (model.identity.world_head.identities = 0)")
    else:
        d, k = head.projection[...].shape
        print(f"identity head {d} -> {k} in {args.workdir}")


def _train(args) -> None:
    if args.distributed:
        import jax

        jax.distributed.initialize()
    from face3d_train.configs import apply_overrides, load
    from face3d_train.loop import train

    _log_to_stderr()
    config = apply_overrides(load(args.config), args.set)
    result = train(config, args.workdir)
    print(" ".join(f"{k}={v:.4g}" for k, v in result.items()))


def _load_latents(path: str, what: str):
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: {what} of dtype {x.dtype}, expected float")
    return x


def _latents(args, run):
    """(w (B, L, 512), names) from --seed/--num, --z or --w."""
    if args.w is not None:
        w = run.check_w(_load_latents(args.w, "w"))
        return w, [f"w{i:04d}" for i in range(len(w))]
    if getattr(args, "z", None) is not None:
        w = run.w_from_z(_load_latents(args.z, "z"))
        return w, [f"z{i:04d}" for i in range(len(w))]
    seeds = list(range(args.seed, args.seed + getattr(args, "num", 1)))
    return run.w_from_seeds(seeds), [f"seed{s:04d}" for s in seeds]


def _generate(args) -> None:
    from face3d_train.generate import generate
    from face3d_train.trained import load_run

    if args.num < 1:
        raise ValueError(f"--num {args.num}: at least 1")
    run = load_run(args.workdir, args.step, truncation=args.truncation)
    w, names = _latents(args, run)
    paths = generate(run, w, args.out, names=names, video=args.video)
    print(f"wrote {len(w)} faces ({len(paths)} files) to {args.out}")


def _edit(args) -> None:
    from face3d_train.generate import boundary, edit
    from face3d_train.trained import load_run

    if args.text is not None:
        _text_edit(args)
        return
    if args.attribute is None or args.alpha is None:
        raise ValueError("edit needs --attribute NAME and --alpha A..., or --text PROMPT "
                         "--clip FILE")
    run = load_run(args.workdir, args.step, truncation=args.truncation)
    normal = boundary(args.attribute, run)
    w, names = _latents(args, run)
    if len(w) != 1:
        raise ValueError(f"--w holds {len(w)} latents: edit takes one")
    stem = f"{names[0]}_{Path(args.attribute).stem}"
    paths = edit(run, w, normal, args.alpha, args.out, name=stem, video=args.video)
    print(f"wrote {len(args.alpha)} edits ({len(paths)} files) to {args.out}")


def _text_edit(args) -> None:
    from face3d_train.text_edit import StyleClipConfig, edit_text, load_clip, write_text_edit
    from face3d_train.trained import load_run

    if args.attribute is not None or args.alpha is not None or args.video:
        raise ValueError("--text edits by a prompt: --attribute, --alpha and --video are for "
                         "boundary edits")
    config = StyleClipConfig(steps=args.steps, lr=args.lr, l2_lambda=args.l2_lambda,
                             id_lambda=args.id_lambda)
    model, tokenizer = load_clip(args.clip)  # the file is checked before the run loads
    run = load_run(args.workdir, args.step, truncation=args.truncation)
    w, names = _latents(args, run)
    if len(w) != 1:
        raise ValueError(f"--w holds {len(w)} latents: edit takes one")
    result = edit_text(run, w, args.text, model, tokenizer, config)
    paths = write_text_edit(run, result, args.out, name=names[0])
    print(f"{args.text!r}: CLIP loss {result.clip_losses[0]:.4f} -> {result.clip_losses[-1]:.4f}, "
          f"|w - w0|^2 {result.l2[-1]:.4g}; wrote {len(paths)} files to {args.out}")


def _report(args) -> None:
    from face3d_train.report import write_report

    path = write_report(args.workdir, args.out, step=args.step, faces=args.faces)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


def _reconstruct(args) -> None:
    from face3d_train.reconstruct import InversionConfig, read_image, reconstruct
    from face3d_train.trained import load_run

    images = [read_image(p) for p in args.images]  # every file checked before any work
    names = [Path(p).stem for p in args.images]
    if len(set(names)) != len(names):
        raise ValueError("two images share a file name: their outputs would collide")
    run = load_run(args.workdir, args.step)
    config = InversionConfig(steps=args.steps, lr=args.lr, w_plus=args.w_plus,
                             pixel_weight=args.pixel_weight)
    paths, _, inv = reconstruct(run, images, args.out, names=names, config=config)
    for name, first, last in zip(names, inv.losses[0], inv.losses[-1]):
        print(f"{name}: inversion loss {first:.4g} -> {last:.4g}")
    print(f"wrote {len(paths)} files to {args.out}")


def _predict_now(args) -> None:
    from face3d_eval.now_predict import predict

    _log_to_stderr("face3d_eval")
    res = predict(args.workdir, args.images, args.out, imgs_list=args.list, step=args.step)
    print(f"wrote {len(res.written)} predictions to {res.out}; {len(res.skipped)} images "
          "skipped (unreadable or no face found)")


def _eval_now(args) -> None:
    from face3d_eval.now import evaluate, format_result

    _log_to_stderr("face3d_eval")
    res = evaluate(args.predictions, args.gt, image_set=args.image_set, imgs_list=args.list,
                   challenge=args.challenge, method=args.method, metrical=args.metrical,
                   unit=args.unit, out=args.out)
    print(format_result(res))
    print(f"wrote {res.path}")


def _eval_realy(args) -> None:
    from face3d_eval.realy import run

    _log_to_stderr("face3d_eval")
    run(args.predictions, args.realy, args.template, args.keypoints, scale=args.scale,
        out=args.out, mask=args.mask)


def _eval_identity(args) -> None:
    from face3d_eval.identity_poses import run_identity

    _log_to_stderr()
    run_identity(args.workdir, step=args.step, num=args.num, seed=args.seed, out=args.out)


def _eval_diversity(args) -> None:
    from face3d_eval.diversity import run_diversity

    _log_to_stderr()
    run_diversity(args.workdir, step=args.step, num=args.num, seed=args.seed, out=args.out)


def _eval_teacher(args) -> None:
    from face3d_eval.held_out import run_teacher

    _log_to_stderr()
    run_teacher(args.workdir, step=args.step, now=not args.no_now, out=args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not _bench:
        # Compiled programs persist across commands (compile_cache.py: one folder
        # per processor, FACE3D_COMPILE_CACHE=off to disable). Not for `bench`,
        # whose compile times must be cold.
        from face3d_jax import compile_cache

        compile_cache.enable()
    try:
        args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:  # OSError: missing files, failed writes
        # Bad input ends with one line a person can act on, not a traceback.
        print(f"face3d: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
