"""The paper's Table 3 in the teacher world: the diversity of generated meshes
(Sec. 5.4.1), beside the teacher's true diversity of the same latents.

    result = run_diversity("runs/tiny", num=1000)   # writes runs/tiny/eval/diversity.json
    print(format_table(result))

Diversity of N meshes x_1..x_N (V vertices each, in correspondence):

    D = 2 / (N (N - 1)) sum_{i < j} (1 / V) sum_v || x_i[v] - x_j[v] ||_2      (mm)

the mean over all pairs of the mean per-vertex Euclidean distance: "the mean
vertex distance over all possible pairs of n meshes" (Sec. 5.4.1, after its
refs. [1, 50]). The paper does not say whether a vertex distance is
Euclidean or squared; we take the Euclidean one (a distance in mm, comparable
with the NoW-style errors; squared distances would be dominated by the few
pairs that differ most). Nor whether the meshes are aligned: no alignment is
done (FLAME's meshes share one frame), but the head's rigid pose is taken out
(global pose 0) for the "detailed" and "coarse" columns: a head turned by
30 degrees moves the face by about as much as any identity does, and the
paper's methods (MICA) output unposed meshes. Columns:
  detailed   the detailed mesh M' (coarse + G_Disp's displacement), global
             pose 0, expression and jaw kept (`Faces.canonical`);
  coarse     the FLAME mesh M_c of the same codes (global pose 0);
  neutral    the shape code alone (zero expression and pose,
             `metrics.neutral_vertices`): expression inflates the two above;
  posed      M' as E_shape posed it (`Faces.detailed`, head pose included):
             what a reconstruction outputs, for reference.
Rows: ours (E_shape on the source image of w, G_Disp of w: `run.faces(w)`)
and the teacher's truth of the same w (its shape, expression, jaw and eye
pose and displacement; global and neck pose 0 except for "posed").
w: N latents from z ~ N(0, I) drawn with `jax.random.key(seed)`, mapped by
the run's source with its truncation.

All pairs are computed in blocks (`pair_distances`): two blocks of b meshes
give a (b, b) matrix at a time, never an N x N x V array.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from face3d_eval import tables
from face3d_jax.flame import displace, flame_forward
from face3d_jax.metrics import neutral_vertices

COLUMNS = {"detailed": "detailed", "coarse": "coarse", "neutral": "neutral (shape only)",
           "posed": "detailed, posed"}
ROWS = {"ours": "ours (E_shape + G_Disp)", "teacher": "teacher (truth of the same w)"}


@jax.jit
def _block_distances(a, b):
    """(Ba, V, 3), (Bb, V, 3) float32 -> (Ba, Bb) float32 mean per-vertex distance."""
    def row(x):
        return jnp.mean(jnp.sqrt(jnp.sum((b - x[None]) ** 2, axis=-1)), axis=-1)

    return jax.lax.map(row, a)


def pair_distances(vertices, *, block: int = 64) -> np.ndarray:
    """The mean per-vertex Euclidean distance of every pair of meshes.

    Args:
      vertices: (N, V, 3) float meshes in correspondence (any unit).
      block: meshes per block (memory: block x V x 3 floats per row of a
        block pair; one compiled shape, the last block padded).
    Returns:
      (N, N) float64, symmetric, zero diagonal, in the input's unit.
    """
    x = np.asarray(vertices, np.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"vertices of shape {x.shape}: expected (N, V, 3)")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    n = x.shape[0]
    block = min(block, n)
    starts = list(range(0, n, block))
    padded = np.concatenate([x, np.repeat(x[-1:], len(starts) * block - n, 0)])
    blocks = [jnp.asarray(padded[s:s + block]) for s in starts]
    out = np.zeros((len(starts) * block,) * 2, np.float64)
    for i, si in enumerate(starts):
        for j in range(i, len(starts)):
            sj = starts[j]
            d = np.asarray(_block_distances(blocks[i], blocks[j]), np.float64)
            out[si:si + block, sj:sj + block] = d
            out[sj:sj + block, si:si + block] = d.T
    out = out[:n, :n]
    np.fill_diagonal(out, 0.0)
    return out


def diversity(vertices, *, block: int = 64) -> float:
    """D of the module docstring for (N >= 2, V, 3) meshes, in their unit."""
    n = np.shape(vertices)[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 meshes, got {n}")
    d = pair_distances(vertices, block=block)
    return float(d[np.triu_indices(n, 1)].mean())


def _ours(run, faces) -> dict[str, np.ndarray]:
    codes = {k: jnp.asarray(v) for k, v in faces.codes.items()}
    b = len(faces)
    zeros = lambda n: jnp.zeros((b, n), jnp.float32)
    coarse = flame_forward(run.model, codes["shape"], codes["expression"], zeros(3), zeros(3),
                           codes["jaw_pose"], zeros(6)).vertices
    return {"detailed": faces.canonical, "coarse": np.asarray(coarse),
                "neutral": np.asarray(neutral_vertices(run.model, codes["shape"])),
                "posed": faces.detailed}


def _truth_fn(world):
    """w (B, L, 512) -> the teacher's meshes (module docstring), (B, V, 3) each."""
    from face3d_jax import teacher as tt

    model = world.model

    def truth(w):
        s = tt.scene(world, w)
        params = s.flame_params()
        posed = flame_forward(model, **params).vertices
        params.update(global_pose=jnp.zeros_like(s.global_pose),
                      neck_pose=jnp.zeros_like(s.neck_pose))
        coarse = flame_forward(model, **params).vertices
        moved = lambda v: displace(v, model.faces, model.vertex_uv,
                                   s.displacement, mask=world.skin_vertex)
        return {"detailed": moved(coarse), "coarse": coarse,
                    "neutral": neutral_vertices(model, s.shape), "posed": moved(posed)}

    return jax.jit(truth)


def meshes(run, w, batch: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """{"ours" | "teacher": {column: (N, V, 3) float32 metres}} of latents w
    (N, L, 512); "teacher" only for a teacher-world run. Made `batch` at a
    time, keeping the meshes only (a face's albedo and images are dropped)."""
    out = {"ours": {c: [] for c in COLUMNS}}
    truth = None
    if run.config.data.generate.source == "teacher":
        truth = _truth_fn(run.source.world)
        out["teacher"] = {c: [] for c in COLUMNS}
    for s in range(0, len(w), batch):
        wb = w[s:s + batch]
        for c, v in _ours(run, run.faces(wb, batch=batch)).items():
            out["ours"][c].append(np.asarray(v, np.float32))
        if truth is not None:
            real = len(wb)
            padded = np.concatenate([wb, np.repeat(wb[-1:], batch - real, 0)])
            for c, v in truth(jnp.asarray(padded)).items():
                out["teacher"][c].append(np.asarray(v, np.float32)[:real])
    return {r: {c: np.concatenate(v) for c, v in cols.items()} for r, cols in out.items()}


def diversity_table(run, *, num: int = 1000, seed: int = 0, batch: int = 16,
                    block: int = 64) -> dict:
    """Table 3 of a loaded run (module docstring).

    Args:
      run: a `face3d_train.trained.TrainedModel`.
      num: N >= 2 meshes; seed: the draw of z; batch: faces per compiled
        call; block: meshes per block of `pair_distances`.
    Returns:
      A result dict (face3d_eval.tables): name "diversity", step, num, seed,
      truncation, columns, rows, diversity_mm {row: {column: float}} (the
      teacher's row only for a teacher-world run), pair_std_mm (the standard
      deviation over pairs), formula, seconds, tables.
    """
    if num < 2:
        raise ValueError(f"num must be at least 2 (diversity is over pairs), got {num}")
    start = time.perf_counter()
    z = np.asarray(jax.random.normal(jax.random.key(int(seed)), (num, run.style_dim)))
    w = run.w_from_z(z)
    found = meshes(run, w, batch)
    div, std = {}, {}
    iu = np.triu_indices(num, 1)
    for r, cols in found.items():
        div[r], std[r] = {}, {}
        for c, v in cols.items():
            d = pair_distances(v * 1000.0, block=block)[iu]
            div[r][c], std[r][c] = float(d.mean()), float(d.std())
    result = {
        "name": "diversity", "workdir": str(run.workdir), "step": run.step, "num": num,
        "seed": int(seed),
        "truncation": float(run.config.data.generate.truncation), "columns": dict(COLUMNS),
        "rows": {r: ROWS[r] for r in div}, "diversity_mm": div, "pair_std_mm": std,
        "formula": "mean over pairs i<j of the mean over vertices of |x_i[v] - x_j[v]|_2, mm",
        "seconds": time.perf_counter() - start}
    result["tables"] = display_tables(result)
    return result


def display_tables(result: dict) -> list[dict]:
    """Rows: ours, the teacher; columns: detailed, coarse, neutral, posed (mm)."""
    cols = list(result["columns"])
    rows = [[result["rows"][r]] + [result["diversity_mm"][r][c] for c in cols]
            for r in result["diversity_mm"]]
    if "teacher" in result["diversity_mm"]:
        ours, truth = result["diversity_mm"]["ours"], result["diversity_mm"]["teacher"]
        rows.append(["ours / teacher"] + [ours[c] / truth[c] if truth[c] else None
                                          for c in cols])
    notes = [(f"{result['num']} meshes (z seed {result['seed']}), step {result['step']}: "
             "mean over all pairs of the mean per-vertex Euclidean distance (mm); "
             "detailed and coarse with the head pose removed, neutral = shape only")]
    return [tables.table("Table 3: diversity of generated meshes (mm, higher is more diverse)",
                         ["meshes"] + [result["columns"][c] for c in cols], rows, notes)]


def format_table(result: dict) -> str:
    """The result's table as Markdown text."""
    return tables.markdown(result["tables"])


def run_diversity(workdir, *, step: int | None = None, num: int = 1000, seed: int = 0,
                  batch: int = 16, out=None) -> dict:
    """`face3d eval diversity`: loads a run, computes `diversity_table`, writes
    the JSON (default <workdir>/eval/diversity.json), prints the table and
    returns the result (its "path": where the JSON went).

    Raises FileNotFoundError (no run folder, config or checkpoint) or
    ValueError (num < 2), one line each.
    """
    from face3d_train.trained import load_run

    if num < 2:
        raise ValueError(f"num must be at least 2 (diversity is over pairs), got {num}")
    run = load_run(workdir, step)
    result = diversity_table(run, num=num, seed=seed, batch=batch)
    path = tables.write_result(result, out or tables.default_path(workdir, "diversity"))
    result["path"] = str(path)
    print(format_table(result))
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return result
