"""Can F tell the teacher world's people apart? Cosine statistics and rank-1
identification of held-out identities seen several ways, for each identity
network a run can use, and dlib's face-detection rate on the renders.

    python -m face3d_eval.identity_separability --config tiny --workdir runs/tiny

The held-out draw: G identities x K views (`teacher.identity_views` with
eval.seed: expression, pose, light, camera and background vary; shape and
albedo are shared within an identity), rendered and cropped exactly as the
dataset is (the crop the trainer feeds F). Rows:
  - dlib, whole crop: dlib's ResNet on the crop resized to its chip size,
    unaligned (what F was fed before faces were aligned);
  - dlib, aligned: on dlib's chip cut by the true landmarks (`faces.align`);
  - dlib, aligned + world head: with the run's teacher-world head
    (<workdir>/identity_head.npz, fitted when missing; `face3d_train.identity`);
  - arcface rows likewise with --arcface WEIGHTS (an insightface/MICA .pth).
Columns (`metrics.identity_statistics`): the mean cosine between two views
of one identity (and its 10th percentile), between different identities (and
its 90th percentile), their gap, and rank-1 identification among all G x K
images. Detection: the share of the full renders in which dlib's HOG
detector finds a face (upsampling once, as `face3d landmarks` does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import face3d_train  # noqa: F401
except ImportError:  # a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from face3d_jax import metrics  # noqa: E402
from face3d_jax import teacher as tt  # noqa: E402
from face3d_jax.data.dataset_sources import TeacherSource  # noqa: E402
from face3d_jax.faces.align import RENDER_TO_INDEX  # noqa: E402
from face3d_jax.nets.identity import IdentityNetwork  # noqa: E402
from face3d_train.configs import apply_overrides, load  # noqa: E402
from face3d_train.data import generate_config  # noqa: E402
from face3d_train.identity import ensure_identity_head  # noqa: E402
from face3d_train.loop import load_model  # noqa: E402
from face3d_train.models import identity_network  # noqa: E402


def _embed(fn, *arrays, batch: int = 16) -> np.ndarray:
    """fn over the leading axis of arrays in batches of one compiled size."""
    n = arrays[0].shape[0]
    out = []
    for start in range(0, n, batch):
        idx = np.minimum(np.arange(start, start + batch), n - 1)
        out.append(np.asarray(fn(*(jnp.asarray(a[idx]) for a in arrays)))[:min(batch, n - start)])
    return np.concatenate(out)


def network_rows(name: str, network: IdentityNetwork, held: tt.HeldOut, head=None) -> dict:
    """{row name: embeddings (N, D)} of one backbone: unaligned, aligned, with the head."""
    crop, lmk = held.crop, held.landmarks + RENDER_TO_INDEX
    size = network.chip_size
    plain = IdentityNetwork(network.backbone, chip_size=size)
    rows = {
        f"{name}, whole crop": _embed(jax.jit(lambda x: plain.embed_chips(
            jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear"))[0]), crop),
        f"{name}, aligned": _embed(jax.jit(lambda x, p: plain(x, p)[0]), crop, lmk),
    }
    if head is not None:
        headed = IdentityNetwork(network.backbone, chip_size=size, head=head)
        rows[f"{name}, aligned + world head"] = _embed(jax.jit(lambda x, p: headed(x, p)[0]),
                                                       crop, lmk)
    return rows


def detection_rate(images: np.ndarray) -> float:
    """Share of (N, H, W, 3) float [0, 1] images where dlib's detector finds a face."""
    from face3d_jax.faces.detect import FaceTools

    tools = FaceTools.load()
    found = [len(tools.detect(np.round(im * 255.0).astype(np.uint8), upsample=1)) > 0
             for im in images]
    return float(np.mean(found))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny, paper or a config file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default=None,
                    help="a run's folder: its identity_head.npz is used (fitted there if "
                         "missing); without it the world head is fitted in memory")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--arcface", default="", help="ArcFace iresnet weights (.pth) to add rows for")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.identities < 2 or args.views < 2:
        ap.error("--identities and --views must be at least 2")

    config = apply_overrides(load(args.config), args.set)
    model = load_model(config)
    world = TeacherSource(generate_config(config), model).world
    crop_size = int(config.data.generate.crop_size)
    w = tt.identity_views(world, jax.random.key(int(config.eval.seed)), args.identities,
                          args.views)
    held = tt.held_out_from_w(world, w, crop_size)
    labels = np.repeat(np.arange(args.identities), args.views)

    if args.workdir:
        head = ensure_identity_head(config, args.workdir, model=model)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            head = ensure_identity_head(config, tmp, model=model)
    rows = network_rows(f"{config.model.identity.kind} ({config.model.identity.chip_size}^2)",
                        identity_network(config.model), held, head)
    if args.arcface:
        arc = config.copy_and_resolve_references()
        arc.model.identity.kind, arc.model.identity.weights = "arcface", args.arcface
        arc_head = None
        if head is not None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                arc_head = ensure_identity_head(arc, tmp, model=model)
        rows.update(network_rows("arcface (112^2)", identity_network(arc.model), held, arc_head))

    figures = {name: metrics.identity_statistics(emb, labels) for name, emb in rows.items()}
    rate = detection_rate(held.image)
    print(f"{args.identities} held-out identities x {args.views} views (eval.seed "
          f"{config.eval.seed}), {crop_size}^2 crops of {held.image.shape[1]}^2 renders")
    print("| F | same (p10) | different (p90) | gap | rank-1 |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['same_mean']:.3f} ({f['same_p10']:.3f}) | "
              f"{f['different_mean']:.3f} ({f['different_p90']:.3f}) | {f['gap']:.3f} | "
              f"{f['rank1']:.2f} |")
    print(f"dlib's detector finds a face in {rate:.0%} of the {len(held.image)} renders")
    result = dict(figures=figures, detection_rate=rate, identities=args.identities,
                  views=args.views)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
