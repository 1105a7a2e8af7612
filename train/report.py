"""One self-contained HTML page about a training run: `face3d report`.

    write_report("runs/tiny", "tiny.html")            # the last checkpoint, 3 faces
    write_report("runs/tiny", "tiny.html", step=400, faces=5)

The page holds, top to bottom:
  * an interactive 3D viewer (Google's <model-viewer>) of K generated faces:
    the detailed mesh with G_Ab's albedo, one binary glTF each (as
    `face3d generate` writes them);
  * the metric curves of WORKDIR/metrics.jsonl (matplotlib PNGs);
  * the evaluation table (eval/* at each evaluated step), the tables of
    `face3d eval identity|diversity|teacher` where their JSONs are in
    WORKDIR/eval/ (the paper's Tables 4 and 3, the held-out evaluation),
    and done.json;
  * for held-out identities of the teacher world: target crop, render,
    generated albedo and true albedo.

Everything is inlined (PNGs and .glb files as base64 data: URIs, the
model-viewer UMD build in a <script> tag), so the page opens from file://
with no network: browsers refuse ES modules and relative fetches of local
files there (CORS), which rules out the module build and .glb files beside
the page. See vendor/model_viewer/README.md for the vendored script.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

MODEL_VIEWER_VERSION = "4.4.0"
MODEL_VIEWER_FILE = "vendor/model_viewer/model-viewer-umd.min.js"
HELD_OUT_COUNT = 4  # identities in the image grid
MIN_IMAGE_PX = 128  # small crops and maps are upsampled (nearest) to at least this
VIEWER_PX = 320  # each <model-viewer> is a VIEWER_PX square
# The viewers' background: the browser test counts pixels that differ from it.
VIEWER_BACKGROUND = (238, 240, 243)

# Eval curves drawn together on one axis, because they read against each other:
# (figure title, [(panel title, y label, name prefixes)]). eval/* names matching
# no prefix get a panel each in "Held-out losses".
EVAL_GROUPS = (
    ("Shape error on held-out identities", [
        ("shape error", "mm", ("eval/shape_error",))]),
    ("Albedo PSNR against the true albedo", [
        ("albedo PSNR (baseline: the training set's mean albedo)", "dB",
         ("eval/albedo_psnr",))]),
    ("Identity similarity", [
        ("identity similarity (baseline: the mean albedo)", "cosine",
         ("eval/id_similarity",))]),
    ("Camera and landmarks", [
        ("camera scale (over the crop prior's)", "ratio", ("eval/camera_scale",)),
        ("landmark error", "px", ("eval/landmark_px",))]),
)
# Training phases in the order they run; any other train/<group>/ follows.
TRAIN_ORDER = ("pretrain", "shape", "albedo", "gan", "grad_norm")


# -- metrics ----------------------------------------------------------------

def metric_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each scalar metric as (steps (N,) int64, values (N,) float64), steps
    increasing.

    A resumed run logs the steps after its last checkpoint again; the last
    record of a step wins, as it is the one the run carried on from. Null
    (non-finite) values are dropped.
    """
    by_name: dict[str, dict[int, float]] = {}
    for row in records:
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        for name, value in row.items():
            if name == "step" or value is None or not isinstance(value, (int, float)):
                continue
            by_name.setdefault(name, {})[int(step)] = float(value)
    out = {}
    for name, points in by_name.items():
        steps = np.array(sorted(points), np.int64)
        out[name] = (steps, np.array([points[s] for s in steps], np.float64))
    return out


def curve_groups(names) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
    """The figures to draw for these metric names: [(title, [(panel title,
    y label, [names])])]. Empty groups are left out."""
    names = sorted(names)
    evals = [n for n in names if n.startswith("eval/")]
    used: set[str] = set()
    groups = []
    for title, panels in EVAL_GROUPS:
        drawn = []
        for panel, ylabel, prefixes in panels:
            members = [n for n in evals if n.startswith(prefixes) and n not in used]
            used.update(members)
            if members:
                drawn.append((panel, ylabel, members))
        if drawn:
            groups.append((title, drawn))
    rest = [n for n in evals if n not in used]
    if rest:
        groups.append(("Held-out losses", [(_short(n), "", [n]) for n in rest]))
    by_phase: dict[str, list[str]] = {}
    for n in names:
        if n.startswith("train/"):
            parts = n.split("/")
            by_phase.setdefault(parts[1] if len(parts) > 2 else "", []).append(n)
    order = [p for p in TRAIN_ORDER if p in by_phase]
    order += sorted(p for p in by_phase if p not in TRAIN_ORDER and p)
    order += [""] if "" in by_phase else []
    for phase in order:
        title = f"Training: {phase}" if phase else "Training: run state"
        groups.append((title, [(_short(n), "", [n]) for n in by_phase[phase]]))
    other = [n for n in names if not n.startswith(("eval/", "train/"))]
    if other:
        groups.append(("Other", [(n, "", [n]) for n in other]))
    return groups


def _short(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def _smooth(values: np.ndarray, span: int) -> np.ndarray:
    # An exponential moving average with bias correction, as TensorBoard
    # smooths: per-step losses are noisy enough to hide their trend.
    alpha = 2.0 / (span + 1.0)
    out, acc, norm = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


def plot_group(title: str, panels, series) -> bytes:
    """One figure of small multiples as PNG bytes.

    Args:
      title: the figure's title.
      panels: [(panel title, y label, [metric names])] (`curve_groups`).
      series: `metric_series`'s dict.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; pyplot picks the backend on first import
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(len(panels), 3 if len(panels) > 4 else 4)
    rows = math.ceil(len(panels) / cols)
    single = len(panels) == 1  # a panel of curves read together: wider, half a page
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 if single else 3.6 * cols, 3.4 * rows),
                             squeeze=False)
    for ax, (panel, ylabel, members) in zip(axes.flat, panels):
        for name in members:
            steps, values = series[name]
            label = _short(name)
            style = "--" if "baseline" in name or "_mean" in name else "-"
            # train/finite and train/phase are states, not noisy losses: not smoothed.
            if len(steps) > 30 and name.count("/") > 1:
                line, = ax.plot(steps, values, style, lw=0.7, alpha=0.3)
                ax.plot(steps, _smooth(values, max(5, len(steps) // 30)), style, lw=1.6,
                        color=line.get_color(), label=label)
            else:
                ax.plot(steps, values, style, marker="o", ms=3, lw=1.4, label=label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 0.25 on short runs
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def eval_table(records: list[dict]) -> tuple[list[int], list[str], np.ndarray]:
    """The eval/* values at each evaluated step.

    Returns:
      steps: the R evaluated steps, increasing; names: the C eval/* metrics,
      sorted; values: (R, C) float64, NaN where a step lacks a metric.
    """
    series = {n: s for n, s in metric_series(records).items() if n.startswith("eval/")}
    names = sorted(series)
    steps = sorted({int(s) for n in names for s in series[n][0]})
    values = np.full((len(steps), len(names)), np.nan)
    row = {s: i for i, s in enumerate(steps)}
    for j, n in enumerate(names):
        for s, v in zip(*series[n]):
            values[row[int(s)], j] = v
    return steps, names, values


def _number(v) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "&ndash;"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return html.escape(json.dumps(v) if not isinstance(v, str) else v)


def eval_table_html(records: list[dict], mark_step: int | None = None) -> str:
    """`eval_table` as an HTML <table> (rows: steps; columns: metrics without
    the eval/ prefix); the row of `mark_step` is highlighted."""
    steps, names, values = eval_table(records)
    if not steps:
        return "<p>No evaluation in metrics.jsonl (eval.identities = 0, or the run " \
               "stopped before its first evaluation).</p>"
    head = "".join(f"<th>{html.escape(_short(n))}</th>" for n in names)
    body = []
    for s, vals in zip(steps, values):
        cls = ' class="mark"' if s == mark_step else ""
        cells = "".join(f"<td>{_number(float(v))}</td>" for v in vals)
        body.append(f"<tr{cls}><th>{s}</th>{cells}</tr>")
    return (f'<div class="scroll"><table class="data"><thead><tr><th>step</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def done_html(workdir: Path) -> str:
    """done.json (written when a run finishes) as a two-column table, or a
    sentence when there is none."""
    path = workdir / "done.json"
    if not path.is_file():
        return "<p>No done.json: the run has not finished.</p>"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"<p>done.json is unreadable ({html.escape(str(err))}).</p>"
    if not isinstance(data, dict):
        return f"<pre>{html.escape(json.dumps(data, indent=1))}</pre>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_number(v)}</td></tr>"
                   for k, v in data.items())
    return f'<table class="data kv">{rows}</table>'


# -- `face3d eval` tables -------------------------------------------------------

# The JSONs of `face3d eval identity|diversity|teacher` (face3d_eval.tables), in
# the page's order: the paper's Table 4, Table 3, then the held-out evaluation.
EVAL_RESULTS = (("identity", "Identity similarity across poses (Table 4)"),
                ("diversity", "Diversity of generated meshes (Table 3)"),
                ("teacher", "Held-out evaluation and NoW protocol (face3d eval teacher)"))


def _cell_html(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return html.escape(str(value))


def result_table_html(table: dict) -> str:
    """One display table of a `face3d eval` result ({"title", "columns",
    "rows", "notes"}: face3d_eval.tables) as an HTML <table>; a row whose
    second cell is a sentence (why it is missing) spans the value columns."""
    cols = [str(c) for c in table.get("columns", [])]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in table.get("rows", []):
        row = list(row)
        if len(row) > 1 and isinstance(row[1], str) and all(v is None for v in row[2:]):
            cells = f'<td colspan="{max(1, len(cols) - 1)}" class="why">{html.escape(row[1])}</td>'
        else:
            cells = "".join(f"<td>{_cell_html(v)}</td>" for v in row[1:])
        body.append(f"<tr><th>{html.escape(str(row[0]) if row else '')}</th>{cells}</tr>")
    notes = "".join(f'<p class="meta">{html.escape(str(n))}</p>' for n in table.get("notes", []))
    return (f'<p class="caption">{html.escape(str(table.get("title", "")))}</p>'
            f'<div class="scroll"><table class="data result"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{notes}')


def eval_results_html(workdir: Path) -> str:
    """The tables of <workdir>/eval/{identity,diversity,teacher}.json where
    they exist (one sentence for an unreadable one; "" when there is none)."""
    parts = []
    for name, title in EVAL_RESULTS:
        path = Path(workdir) / "eval" / f"{name}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            tables = data["tables"]
            step = data.get("step")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            parts.append(f"<h3>{html.escape(title)}</h3><p>eval/{name}.json is unreadable "
                         f"({html.escape(type(err).__name__)}: {html.escape(str(err))}).</p>")
            continue
        parts.append(f'<h3 id="eval-{name}">{html.escape(title)}, step {_cell_html(step)}</h3>'
                     + "".join(result_table_html(t) for t in tables if isinstance(t, dict)))
    return "".join(parts)


# -- images -----------------------------------------------------------------

def _to_uint8(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] or uint8 -> uint8."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.round(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return a


def _upsample(image: np.ndarray, min_px: int = MIN_IMAGE_PX) -> np.ndarray:
    # Nearest, by an integer factor: a 32 px crop is shown as its pixels are.
    f = max(1, math.ceil(min_px / max(image.shape[:2])))
    return np.repeat(np.repeat(image, f, axis=0), f, axis=1) if f > 1 else image


def png_data_uri(image) -> str:
    """(H, W, 3) float in [0, 1] or uint8 -> a data:image/png;base64 URI,
    upsampled to at least MIN_IMAGE_PX."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_upsample(_to_uint8(image))).save(buf, format="PNG")
    return _data_uri("image/png", buf.getvalue())


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def held_out_html(run, count: int = HELD_OUT_COUNT) -> str:
    """Held-out identities of the teacher world, drawn as the trainer's
    evaluation draws them (eval.seed): target crop, render, generated and
    true albedo per row. A sentence instead for a run without a teacher."""
    import jax

    from face3d_jax import teacher as tt

    if run.config.data.generate.source != "teacher":
        return ("<p>No held-out grid: the run's images come from a "
                f"{html.escape(str(run.config.data.generate.source))} source, which has no "
                "true albedo to compare with (only the teacher world has one).</p>")
    held = tt.make_held_out(run.source.world, jax.random.key(int(run.config.eval.seed)),
                            count, run.crop_size)
    faces = run.faces(held.w)
    columns = ("target crop", "render", "generated albedo", "true albedo")
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = []
    for i in range(count):
        imgs = (faces.crop[i], faces.render[i], faces.albedo[i], held.albedo[i])
        cells = "".join(f'<td><img alt="{c}" src="{png_data_uri(im)}"></td>'
                        for c, im in zip(columns, imgs))
        rows.append(f"<tr><th>{i}</th>{cells}</tr>")
    return (f'<table class="grid"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


# -- 3D viewer ----------------------------------------------------------------

def model_viewer_script() -> str:
    """The vendored model-viewer UMD build (str, about 1 MB), ready to inline."""
    text = resources.files("face3d_train").joinpath(MODEL_VIEWER_FILE).read_text("utf-8")
    # The map is not vendored; a devtools window would ask for it and fail.
    text = re.sub(r"\n//# sourceMappingURL=\S*\s*$", "\n", text)
    # Inlined, "</script" would end the element early and "<script" after the
    # "<!--" the build contains would keep it from ending; neither is in 4.4.0.
    if re.search(r"</?script", text, re.IGNORECASE):
        raise RuntimeError(f"{MODEL_VIEWER_FILE} contains a <script> tag: it cannot be inlined")
    return text


def _generated_faces(run, count: int):
    """The `Faces` of seeds 0, 1, ... (count of them). A StyleGAN2 source can
    draw an image where dlib finds no face (`run.faces` raises ValueError);
    such seeds are passed over, up to 4 * count tries."""
    w = run.w_from_seeds(range(count))
    try:
        return run.faces(w)
    except ValueError:
        pass
    good = []
    for seed in range(4 * count):
        w = run.w_from_seeds([seed])
        try:
            run.faces(w)
        except ValueError:
            continue
        good.append(w)
        if len(good) == count:
            return run.faces(np.concatenate(good))
    raise ValueError(f"only {len(good)} of the first {4 * count} seeds gave an image with a "
                     "face that dlib finds")


def generated_glbs(run, count: int) -> list[bytes]:
    """count binary glTF files (bytes) of generated faces, as `face3d
    generate` writes them (`face_files.mesh_arrays`): the canonical detailed
    mesh (metres) with smooth normals and the generated albedo as texture."""
    from face3d_jax.export import export_glb
    from face3d_train.face_files import mesh_arrays

    faces = _generated_faces(run, count)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            path = Path(tmp) / f"face_{i}.glb"
            export_glb(path, **mesh_arrays(faces, i, run.model))
            out.append(path.read_bytes())
    return out


def viewer_html(glbs: list[bytes]) -> str:
    """One <model-viewer> per .glb (bytes), each a VIEWER_PX square."""
    bg = "rgb({}, {}, {})".format(*VIEWER_BACKGROUND)
    items = []
    for i, data in enumerate(glbs):
        # The camera starts in front of the face (FLAME faces +z, as glTF's
        # front does), nearly level. A radius of 100% is model-viewer's tight
        # framing over every orbit angle: the head and neck fill the box and
        # stay whole while it turns (its default, 105%, leaves a margin; 92%
        # already cut the top of the head off in a screenshot).
        items.append(
            f'<figure><model-viewer id="face-{i}" src="{_data_uri("model/gltf-binary", data)}" '
            f'alt="generated face {i}" camera-controls auto-rotate auto-rotate-delay="2000" '
            f'camera-orbit="0deg 80deg 100%" interaction-prompt="none" shadow-intensity="0" '
            f'environment-image="neutral" exposure="1" '
            f'style="width:{VIEWER_PX}px;height:{VIEWER_PX}px;background-color:{bg}">'
            f'</model-viewer><figcaption>seed {i} ({len(data) // 1024} KB)</figcaption>'
            f'</figure>')
    return f'<div id="viewers">{"".join(items)}</div>'


# -- the page -----------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; padding: 12px 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
p.meta { margin: 0 0 10px; color: #555; font-size: 13px; }
#viewers { display: flex; flex-wrap: wrap; gap: 8px; }
#viewers figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
#curves { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: flex-start; }
img.curve { display: block; max-width: 100%; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-size: 12px; }
table.data th, table.data td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.data thead th { background: #f0f0f0; }
table.data tr.mark { background: #fff5cc; }
table.kv th { text-align: left; }
table.grid img { image-rendering: pixelated; display: block; }
table.grid th { font-size: 12px; font-weight: normal; color: #555; }
p.caption { font-size: 13px; font-weight: 600; margin: 10px 0 4px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
table.result td.why { text-align: left; color: #555; font-style: italic; }
"""


def write_report(workdir, out_path, *, step: int | None = None, faces: int = 3) -> Path:
    """Writes the HTML report of a run.

    Args:
      workdir: a `face3d train` folder (config.json, checkpoints/, metrics.jsonl).
      out_path: the .html file to write (its folder is created).
      step: the checkpoint the faces come from (default: the last).
      faces: K >= 0, the generated faces in the 3D viewer (seeds 0..K-1).
    Returns:
      The written path. The page is a few MB: the model-viewer script
      (about 1 MB) and K .glb files of a few hundred KB, base64.
    Raises (one line naming the file):
      FileNotFoundError: no workdir, metrics.jsonl, config.json or checkpoint.
      ValueError: an unreadable metrics.jsonl or config, a bad `faces`.
    """
    from face3d_train.metrics import METRICS_FILE, read_metrics
    from face3d_train.trained import load_run

    workdir, out_path = Path(workdir), Path(out_path)
    if faces < 0:
        raise ValueError(f"faces must be at least 0, got {faces}")
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no such run folder")
    if not (workdir / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{workdir / METRICS_FILE} is missing: the run has logged "
                                "nothing yet")
    records = read_metrics(workdir)
    run = load_run(workdir, step)  # before any drawing: config/checkpoint errors come first

    series = metric_series(records)
    curves = [f'<img class="curve" alt="{html.escape(title)}" '
              f'src="{_data_uri("image/png", plot_group(title, panels, series))}">'
              for title, panels in curve_groups(series)]
    viewer, script = "", ""
    if faces:
        viewer = viewer_html(generated_glbs(run, faces)) + (
            "<p class='meta'>Generated faces at the checkpoint (detailed mesh facing the camera, "
            "G_Ab's albedo, lit by the viewer's neutral environment rather than the predicted "
            "light); drag to turn, scroll to zoom.</p>")
        script = (f"<!-- @google/model-viewer {MODEL_VIEWER_VERSION} (Apache-2.0, bundles "
                  f"three.js, MIT), inlined -->\n<script>{model_viewer_script()}</script>")
    results = eval_results_html(workdir)
    if results:
        results = ("<h2>Evaluation tables (face3d eval)</h2>\n" + results + "\n")
    gen = run.config.data.generate
    meta = (f"checkpoint step {run.step} of {int(run.config.schedule.total_steps)}; "
            f"image source: {html.escape(str(gen.source))}; crop {run.crop_size} px; "
            f"written {time.strftime('%Y-%m-%d %H:%M')}")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>face3d report: {html.escape(str(workdir))}</title>
<style>{_CSS}</style>
{script}
</head><body>
<h1>face3d run {html.escape(str(workdir))}</h1>
<p class="meta">{meta}</p>
{viewer}
<h2>Metric curves</h2>
<p class="meta">eval/*: held-out teacher identities (defined in face3d_train.evaluation's
docstring; dashed: a baseline); train/*: the logged losses, the thick line smoothed.</p>
<div id="curves">{"".join(curves) or "<p>metrics.jsonl holds no scalar.</p>"}</div>
<h2>Evaluation on held-out identities</h2>
{eval_table_html(records, mark_step=run.step)}
{results}<h2>done.json</h2>
{done_html(workdir)}
<h2>Held-out identities at step {run.step}</h2>
{held_out_html(run)}
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path
