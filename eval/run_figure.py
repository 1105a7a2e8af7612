"""A picture of a finished run in the teacher world: for held-out identities,
the target crop, the render at the target's predicted pose, the generated
albedo (G_Ab's EMA) and the true albedo side by side, under the run's last
evaluation figures.

    python -m face3d_eval.run_figure --workdir runs/tiny --out docs/images/tiny_run.png

It reads WORKDIR/config.json, the last checkpoint and metrics.jsonl, and
draws the images `HeldOutEval.images` writes to TensorBoard (the evaluation's
first held-out identities, the generators' constant noise). No peer: nothing
is timed.
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
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from face3d_train.checkpoint import Checkpointer  # noqa: E402
from face3d_train.evaluation import HeldOutEval  # noqa: E402
from face3d_train.identity import ensure_identity_head  # noqa: E402
from face3d_train.loop import Trainer, load_model, make_mesh  # noqa: E402

COLUMNS = (("target", "target"), ("render", "render"), ("albedo", "generated albedo"),
           ("albedo_truth", "true albedo"))
# The last evaluation's figures printed above the picture, with their labels.
FIGURES = (("eval/shape_error_now_mm", "NoW-region shape error {:.2f} mm"),
           ("eval/shape_error_now_mm_mean_face", "(mean face {:.2f} mm)"),
           ("eval/albedo_psnr", "albedo PSNR {:.1f} dB"),
           ("eval/albedo_psnr_mean_baseline", "(mean A_GT {:.1f} dB)"),
           ("eval/id_similarity", "identity similarity {:.2f}"),
           ("eval/id_similarity_mean_albedo", "(mean albedo {:.2f})"))


def last_evaluation(workdir: Path) -> tuple[int, dict]:
    """The step and eval/* metrics of the last evaluation in metrics.jsonl."""
    step, found = -1, {}
    path = workdir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a training run's folder")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if any(k.startswith("eval/") for k in row):
            step, found = int(row["step"]), row
    return step, found


def caption(step: int, values: dict) -> str:
    """Lines: the step, then one per figure (shape, albedo, identity)."""
    parts = [fmt.format(values[k]) for k, fmt in FIGURES if k in values]
    pairs = [" ".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    return f"held-out identities after step {step}\n" + "\n".join(pairs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a finished run's folder")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--count", type=int, default=4, help="held-out identities (rows)")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        ap.error(f"{config_path} does not exist: not a training run's folder")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    model = load_model(config)
    head = ensure_identity_head(config, workdir, model=model, progress=False)
    trainer = Trainer(config, model, make_mesh(jax.devices()[:1]), identity_head=head)
    with Checkpointer(workdir / "checkpoints", keep=1000, save_every=1, async_save=False) as ck:
        last = ck.latest_step()
        if last is None:
            ap.error(f"{workdir / 'checkpoints'} holds no checkpoint")
        state, _ = ck.restore(trainer.abstract_state(), last)
    images = HeldOutEval(trainer, config).images(state, args.count)
    step, values = last_evaluation(workdir)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = images["target"].shape[0]
    fig, axes = plt.subplots(rows, len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.0 * rows + 0.5),
                             squeeze=False)
    for r in range(rows):
        for c, (key, title) in enumerate(COLUMNS):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[key][r]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
    fig.suptitle(caption(step, values), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): " + caption(step, values).replace("\n", ": "))


if __name__ == "__main__":
    main()
