"""`face3d eval teacher`: the trainer's held-out evaluation of any checkpoint
of a run, standalone (no trainer running), plus NoW's protocol on the
teacher's true meshes.

    result = run_teacher("runs/tiny", step=400)     # writes runs/tiny/eval/teacher.json
    print(format_table(result))

1. `HeldOutEval.evaluate` (face3d_train.evaluation: its docstring defines
   every eval/* figure) on the checkpoint, built as the trainer builds it:
   the run's config, F with the run's teacher-world head, the held-out draw
   of `eval.seed` and `eval.identities`, and the training set's mean A_GT
   for the baselines when the dataset folder is there (it is never generated
   here: without it those baselines are left out, and the result says so).
   At the step the trainer evaluated, the figures equal its metrics.jsonl's
   (same graph, same inputs), up to XLA's float32 reordering.
2. NoW's protocol (face3d_eval.now.scan_to_mesh_errors: NoW's crop of the
   scan around its 7 points, 7-point Procrustes, scan-to-mesh rigid ICP with
   scale, distances of every cropped scan vertex to the prediction's
   surface): per held-out identity the scan is the teacher's true neutral
   mesh (`HeldOut.neutral`, in mm, FLAME's triangles) and the prediction the
   neutral mesh of E_shape's shape code (metres; the scale is fitted), each
   with NoW's 7 points (iBUG 36, 39, 42, 45, 33, 48, 54,
   `metrics.NOW_LANDMARKS`) placed by the model's static landmark embedding.
   Reported as NoW does: median, mean and std over all distances of all
   identities; beside it the mean face (shape code 0) as the yardstick, and
   the metrical variant (no scale: a wrong head size counts). The meshes are
   in correspondence, so the scan-to-mesh distance comes out below the
   per-vertex figure `eval/shape_error_now_mm` of the same crop (a point
   may match any point of the surface, not only its own vertex).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from face3d_eval import tables

# eval/* metrics shown in the main table, grouped, each with its baseline.
GROUPS = (
    ("shape (mm, lower is better)", (
        ("shape_error_mm", "whole head, aligned with scale", None),
        ("shape_error_metric_mm", "whole head, no scale", None),
        ("shape_error_now_mm", "NoW's face region, per vertex", "shape_error_now_mm_mean_face"))),
    ("albedo (dB, higher is better)", (
        ("albedo_psnr", "PSNR against the true albedo", "albedo_psnr_mean_baseline"),)),
    ("identity (cosine, higher is better)", (
        ("id_similarity", "F's similarity of render and crop", "id_similarity_mean_albedo"),)),
)


def _restore_state(trainer, workdir: Path, step: int | None):
    from face3d_train.checkpoint import Checkpointer

    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} is missing: the run has not saved a checkpoint yet")
    with Checkpointer(ckpt_dir, save_every=1, async_save=False, read_only=True) as ckpt:
        step = ckpt.saved_step(step)
        state, _ = ckpt.restore(trainer.abstract_state(), step)
    return state, step


def _dataset_folder(config, workdir: Path) -> tuple[Path | None, str]:
    folder = Path(config.data.dataset_dir or workdir / "data")
    if not folder.exists():
        return None, f"no dataset folder {folder}: the mean-A_GT baselines are left out"
    try:
        from face3d_jax.data import tfds_builder

        tfds_builder.load_builder(folder)
    except Exception as err:  # noqa: BLE001 - any reader error becomes the note
        return None, (f"the dataset {folder} does not read ({type(err).__name__}: {err}): "
                      "the mean-A_GT baselines are left out")
    return folder, ""


def now_errors(model, truth_neutral, pred_neutral, *, metrical: bool = False) -> np.ndarray:
    """NoW's scan-to-mesh distances of N identities, concatenated.

    Args:
      model: the FLAME-format model (triangles, landmark embedding).
      truth_neutral: (N, V, 3) float metres, the scans (used in mm).
      pred_neutral: (N, V, 3) float metres, the predictions.
      metrical: NoW's metrical protocol (no scale).
    Returns:
      (n,) float64 mm over every cropped scan vertex of every identity.
    """
    from face3d_eval.now import scan_to_mesh_errors
    from face3d_jax.metrics import now_landmarks

    scans = np.asarray(truth_neutral, np.float64) * 1000.0
    preds = np.asarray(pred_neutral, np.float64)
    scan_lmk = np.asarray(now_landmarks(model, scans), np.float64)
    pred_lmk = np.asarray(now_landmarks(model, preds), np.float64)
    faces = np.asarray(model.faces, np.int64)
    return np.concatenate([
        scan_to_mesh_errors(s, faces, sl, p, faces, pl, metrical=metrical, unit="m")
        for s, sl, p, pl in zip(scans, scan_lmk, preds, pred_lmk)])


def _predicted_shape(trainer, state, crop) -> np.ndarray:
    """E_shape's shape code (N, S) float32 of crops (N, c, c, 3), as the
    evaluation decodes it."""
    from flax import nnx

    from face3d_train.models import decode_codes

    setup = trainer.setup
    encoder = nnx.merge(setup.graphs["encoder"], state.shape.params["encoder"],
                        state.buffers["encoder"])
    fn = jax.jit(lambda c: decode_codes(encoder(c), setup.layout,
                                        jnp.asarray(setup.camera_prior))["shape"])
    return np.asarray(fn(jnp.asarray(crop)))


def _stats(d: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(d)), "mean": float(np.mean(d)), "std": float(np.std(d)),
            "points": int(d.size)}


def evaluate_teacher(workdir, *, step: int | None = None, now: bool = True) -> dict:
    """The held-out evaluation of a run's checkpoint (module docstring).

    Args:
      workdir: a `face3d train` folder of a teacher-world run.
      step: the checkpoint (default: the last).
      now: also run NoW's protocol (section 2 of the module docstring).
    Returns:
      A result dict (face3d_eval.tables): name "teacher", step, num (the
      held-out identities), seed (eval.seed), metrics {eval/<name>: float},
      now {"ours" | "mean_face": {"median", "mean", "std" (mm), "points"},
      "ours_metrical" | ...} or None with now_note saying why, notes, seconds,
      tables.
    Raises:
      FileNotFoundError: no run folder, config or checkpoint (or that step).
      ValueError: a run without the teacher world, or with eval.identities 0.
    """
    from face3d_jax.metrics import neutral_vertices
    from face3d_train.evaluation import HeldOutEval
    from face3d_train.identity import ensure_identity_head
    from face3d_train.loop import Trainer, load_model, make_mesh
    from face3d_train.trained import read_run_config

    start = time.perf_counter()
    workdir = Path(workdir)
    config = read_run_config(workdir)
    if config.data.generate.source != "teacher":
        raise ValueError(f"{workdir}: the run's images come from a "
                         f"{config.data.generate.source!r} source, which has no truth to "
                         "evaluate against (the teacher world has)")
    if int(config.eval.identities) < 1:
        raise ValueError(f"{workdir / 'config.json'}: eval.identities is "
                         f"{config.eval.identities}: no held-out identities to evaluate")
    model = load_model(config)
    head = ensure_identity_head(config, workdir, model=model, progress=False)
    trainer = Trainer(config, model, make_mesh(jax.devices()[:1]), identity_head=head)
    folder, data_note = _dataset_folder(config, workdir)
    held = HeldOutEval(trainer, config, dataset=folder)
    state, step = _restore_state(trainer, workdir, step)
    metrics = held.evaluate(state)
    notes = [data_note] if data_note else []
    result = {"name": "teacher", "workdir": str(workdir), "step": step,
                  "num": int(held.held.count), "seed": int(config.eval.seed), "metrics": metrics,
                  "now": None, "now_note": ""}
    if now:
        try:
            import face3d_eval.now  # noqa: F401
        except ImportError as err:
            result["now_note"] = f"NoW's protocol is not available ({err})"
        else:
            pred = neutral_vertices(model, _predicted_shape(trainer, state, held.held.crop))
            mean_face = neutral_vertices(model, jnp.zeros((held.held.count, 1), jnp.float32))
            truth = held.held.neutral
            result["now"] = {
                "ours": _stats(now_errors(model, truth, pred)),
                "mean_face": _stats(now_errors(model, truth, mean_face)),
                "ours_metrical": _stats(now_errors(model, truth, pred, metrical=True)),
                "mean_face_metrical": _stats(now_errors(model, truth, mean_face,
                                                        metrical=True)),
            }
    else:
        result["now_note"] = "NoW's protocol not asked for"
    result["notes"] = notes
    result["seconds"] = time.perf_counter() - start
    result["tables"] = display_tables(result)
    return result


def display_tables(result: dict) -> list[dict]:
    """The eval/* figures (grouped, each beside its baseline; then the rest)
    and NoW's median/mean/std (rows: ours, the mean face; scaled and metrical)."""
    m = result["metrics"]
    rows, shown = [], set()
    for group, items in GROUPS:
        for name, label, base in items:
            rows.append([f"{group}: {label}", m.get(f"eval/{name}"),
                         m.get(f"eval/{base}") if base else None])
            shown.update({f"eval/{name}", f"eval/{base}"})
    rows += [[k[len("eval/"):], v, None] for k, v in sorted(m.items()) if k not in shown]
    head = (f"{result['num']} held-out teacher identities (eval.seed {result['seed']}), "
            f"step {result['step']}; baseline: the mean face (shape) or the training set's "
            "mean A_GT (albedo, identity)")
    out = [tables.table("Held-out evaluation (face3d_train.evaluation)",
                        ["metric", "value", "baseline"], rows, [head] + result["notes"])]
    now = result["now"]
    if now is None:
        out.append(tables.table("NoW protocol on the true meshes (mm)",
                                ["prediction", "median", "mean", "std"],
                                [["-", result["now_note"], None, None]]))
    else:
        labels = {"ours": "ours (E_shape's neutral mesh)", "mean_face": "mean face (shape 0)",
                  "ours_metrical": "ours, metrical (no scale)",
                  "mean_face_metrical": "mean face, metrical (no scale)"}
        out.append(tables.table(
            "NoW protocol on the true meshes (mm, lower is better)",
            ["prediction", "median", "mean", "std"],
            [[labels[k], v["median"], v["mean"], v["std"]] for k, v in now.items()],
            [("scan: the true neutral mesh cropped as NoW crops; distances of its vertices "
             "to the prediction's surface after NoW's landmark + ICP alignment, all "
             "identities pooled")]))
    return out


def format_table(result: dict) -> str:
    """The result's tables as Markdown text."""
    return tables.markdown(result["tables"])


def run_teacher(workdir, *, step: int | None = None, now: bool = True, out=None) -> dict:
    """`face3d eval teacher`: `evaluate_teacher`, the JSON written (default
    <workdir>/eval/teacher.json), the tables printed; returns the result
    (its "path": where the JSON went)."""
    result = evaluate_teacher(workdir, step=step, now=now)
    path = tables.write_result(result, out or tables.default_path(workdir, "teacher"))
    result["path"] = str(path)
    print(format_table(result))
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return result
