"""The paper's Table 4 in the teacher world: F's identity similarity between
a source image and its 3D face rendered at several poses (Sec. 5.4.2).

    result = run_identity("runs/tiny", num=32)      # writes runs/tiny/eval/identity.json
    print(format_table(result))

For N held-out teacher identities (fresh z drawn from `jax.random.key(seed)`,
mapped with the run's truncation, rendered and cropped as the training set
is: `teacher.make_held_out`; the default seed is the run's `eval.seed`, the
draw of the trainer's evaluation), E_shape reads the crop and G_Disp, G_Ab
draw from w (`TrainedModel.faces_from_crops`). Each row puts one UV albedo on
*that same* detailed mesh, under the same predicted camera and SH light:
  ours        G_Ab's EMA albedo;
  A_GT        the pseudo-ground truth of Sec. 3.1-3.2 extracted from the
              source image exactly as `face3d data generate` extracts the
              training set's (FLAME landmark fit on the `fit_size` crop from
              the teacher's true landmarks, texture, flip completion, push-pull
              fill, SH shading removal; stored as uint8): the DECA-style row;
  texture     the same chain's completed texture before the shading removal
              (`PseudoAlbedo.texture`);
  naive texture  the texture as extracted, before the flip completion and the
              shading removal (`PseudoAlbedo.raw_texture`: black where the
              image does not see the surface);
  mean A_GT   the training set's mean A_GT (`data.mean_albedo`), one map for
              everybody: what an albedo that ignores the person scores;
  true albedo the teacher's own albedo of the identity: the ceiling of any
              albedo on this mesh (the mesh, light and camera are E_shape's).
A row that cannot be built (no dataset folder for the mean) says why.

Columns: "same pose" renders the mesh as E_shape posed it (predicted head
pose and camera); "0", "+-15", "+-30", "+-45" turn the head to that yaw
(global pose (0, yaw, 0): pitch and roll 0, expression and jaw kept), moved
so that its 51 inner landmarks keep their centroid, under the same camera and
light, so the face stays where the crop has it (the +- pair is averaged per
identity, as the paper's table). These five are drawn on a plain grey
(`BACKGROUND`): the source's own background around a turned head would make
the columns incomparable. "over crop" is the trainer's render, at the source
pose over the source crop (its background shows around the face): for ours
it is the trainer's `eval/id_similarity` of the same identities.

F is the run's identity network as the identity term uses it
(`models.identity_network`: dlib's ResNet, or ArcFace when the config names
its weights; with the run's teacher-world head when the config fits one,
`face3d_train.identity`). Both images are aligned as the term aligns them
(`terms.Context`): the source crop by the teacher's true landmarks, a render
by its projected landmarks (FLAME's 68), each into F's chip. The
similarity is the cosine of the two embeddings (Eq. 1 is 1 minus it). With
a head, a second table gives the backbone's own cosine (no head), the
paper's kind of figure: in the teacher world the backbone finds every face
alike (DESIGN.md: dlib's cosine 0.93 between different people), so its
values sit near 1 for every row and tell the rows apart by little.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from face3d_eval import tables
from face3d_jax.faces.align import RENDER_TO_INDEX
from face3d_jax.flame import displace, flame_forward
from face3d_jax.render.renderer import WeakPerspectiveCamera, render

BACKGROUND = 0.5  # the grey behind the posed renders
YAWS = (0.0, 15.0, -15.0, 30.0, -30.0, 45.0, -45.0)  # degrees (trained.PAPER_YAWS, reordered)
# Column key -> (label, yaws averaged); "same_pose" and "over_crop" are not turned.
COLUMNS = {"same_pose": "same pose", "yaw_0": "0°", "yaw_15": "±15°", "yaw_30": "±30°",
           "yaw_45": "±45°", "over_crop": "over crop"}
ROWS = {
    "ours": "G_Ab's albedo",
    "a_gt": "A_GT (Sec. 3.1-3.2, from the source image)",
    "texture": "texture (flip-completed, shading kept)",
    "naive_texture": "naive texture (as extracted)",
    "mean_a_gt": "mean A_GT (the training set's)",
    "true_albedo": "true albedo (teacher)",
}


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine of embeddings a, b (B, D) float -> (B,) float64 (Eq. 1's
    1 - loss; a zero embedding gives 0, as `losses.identity_loss`)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-8)


class FaceEmbedder:
    """F of a run, as its identity term aligns images (`terms.Context`).

    Args:
      network: an `IdentityNetwork` (`models.identity_network`), with or
        without a head.
    """

    def __init__(self, network):
        from face3d_jax.nets.identity import IdentityNetwork

        self.head = network.head
        backbone = IdentityNetwork(network.backbone, chip_size=network.chip_size)
        graph, state = nnx.split(backbone)
        self._state = state

        def embed(state, images, landmarks):
            f = nnx.merge(graph, state)
            return f.embed(images, f.chip_matrices(landmarks + RENDER_TO_INDEX))[0]

        self._embed = jax.jit(embed)

    def __call__(self, images, landmarks) -> tuple[np.ndarray, np.ndarray]:
        """images (B, H, W, 3) float in [0, 1]; landmarks (B, 68, 2) float32 in
        the renderer's pixels (centres at j + 0.5). Returns the backbone's
        embedding (B, D) float32 and F's (B, K) (the head's; the backbone's
        when F has none)."""
        raw = np.asarray(self._embed(self._state, jnp.asarray(images, jnp.float32),
                                     jnp.asarray(landmarks, jnp.float32)))
        if self.head is None:
            return raw, raw
        return raw, np.asarray(self.head(jnp.asarray(raw)))


def run_identity_network(run):
    """F of a run (`TrainedModel`), its head read from <workdir>/identity_head.npz
    (fitted there, as the trainer does, when the config asks for one and the
    file is missing)."""
    from face3d_train.identity import ensure_identity_head
    from face3d_train.models import identity_network

    head = ensure_identity_head(run.config, run.workdir, model=run.model, progress=False)
    return identity_network(run.config.model, head)


def network_description(network) -> str:
    kind = "dlib's ResNet" if network.alignment == "dlib" else "ArcFace (iresnet)"
    text = f"{kind}, {network.chip_size} px chip"
    if network.head is not None:
        text += f", teacher-world head ({int(network.head.projection[...].shape[1])}-d)"
    return text


def _pad(x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), 0)])


def _views_fn(model, size: int):
    """The jitted renders of one albedo on E_shape's meshes: images (2 + Y, B,
    S, S, 3) and landmarks (2 + Y, B, 68, 2): over the crop, same pose on
    grey, then each of YAWS on grey."""
    yaws = jnp.deg2rad(jnp.asarray(YAWS, jnp.float32))

    def views(codes, dmap, albedo, crop):
        b = crop.shape[0]
        zeros = lambda n: jnp.zeros((b, n), jnp.float32)
        camera = WeakPerspectiveCamera(cam=codes["camera"])
        grey = jnp.full_like(crop, BACKGROUND)

        def mesh(global_pose):
            out = flame_forward(model, codes["shape"], codes["expression"], global_pose,
                                zeros(3), codes["jaw_pose"], zeros(6))
            return displace(out.vertices, model.faces, model.vertex_uv, dmap), out.landmarks

        def draw(vertices, landmarks, background):
            r = render(vertices, model.faces, model.uv_coords, model.uv_faces, albedo, camera,
                       (size, size), sh_coeffs=codes["light"], landmarks=landmarks,
                       background=background)
            return r.image, r.landmarks2d

        posed, posed_lmk = mesh(codes["global_pose"])
        centre = jnp.mean(posed_lmk[:, 17:], axis=1, keepdims=True)

        def turned(yaw):
            v, lmk = mesh(jnp.zeros((b, 3), jnp.float32).at[:, 1].set(yaw))
            shift = centre - jnp.mean(lmk[:, 17:], axis=1, keepdims=True)
            return draw(v + shift, lmk + shift, grey)

        over = draw(posed, posed_lmk, crop)
        same = draw(posed, posed_lmk, grey)
        yaw_images, yaw_lmk = jax.vmap(turned)(yaws)
        return (jnp.concatenate([over[0][None], same[0][None], yaw_images]),
                jnp.concatenate([over[1][None], same[1][None], yaw_lmk]))

    return jax.jit(views)


def _pseudo_fn(gen, model):
    """The dataset's extraction chain (`data.dataset._albedo_fn`) keeping every
    stage: uint8 images (B, R, R, 3), fit-crop matrices (B, 3, 3) and targets
    (B, 68, 2) -> A_GT, texture, raw texture (B, Ta, Ta, 3), each rounded to
    uint8 levels as the dataset stores A_GT."""
    from face3d_jax import fitting
    from face3d_jax import texture as tex
    from face3d_jax.faces.crop import warp_crop

    uvr = tex.uv_raster(model.uv_coords, model.uv_faces, gen.albedo_size)
    res = (gen.fit_size, gen.fit_size)

    def run(images, m_fit, target):
        fit_crop = jax.vmap(lambda im, m: warp_crop(im, m, gen.fit_size))(images, m_fit) / 255.0
        fit = fitting.fit_landmarks(model, target, res, steps=gen.fit_steps,
                                    rigid_steps=gen.rigid_steps)
        out = tex.pseudo_ground_truth_albedo(
            fit_crop, fit.vertices, model.faces, model.uv_coords, model.uv_faces,
            WeakPerspectiveCamera(cam=fit.params.cam), size=gen.albedo_size, uvr=uvr)
        u8 = lambda x: jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
        return u8(out.albedo), u8(out.texture), u8(out.raw_texture)

    return jax.jit(run)


def _fit_inputs(run, w, gen):
    """The source's uint8 images of w and the landmark-fit inputs the dataset
    derives from the true landmarks: (images, m_fit (B, 3, 3) float32,
    target (B, 68, 2) float32 fit-crop pixels, centres at j + 0.5)."""
    from face3d_jax.faces.crop import crop_matrix, transform_points

    images, lmk = run.source.render(w)
    m_fit = np.stack([crop_matrix(p, gen.fit_size) for p in lmk])
    target = np.stack([transform_points(p.astype(np.float64), m)
                       for p, m in zip(lmk, m_fit)]) + 0.5
    return images, m_fit.astype(np.float32), target.astype(np.float32)


def dataset_mean_albedo(run) -> tuple[np.ndarray | None, str]:
    """The run's training-set mean A_GT ((Ta, Ta, 3) float32) and "", or None
    and why not (no dataset folder, or one that does not read)."""
    from face3d_train.data import mean_albedo

    folder = Path(run.config.data.dataset_dir or run.workdir / "data")
    if not folder.exists():
        return None, f"no dataset folder {folder} for the mean A_GT"
    try:
        return mean_albedo(folder), ""
    except Exception as err:  # noqa: BLE001 - any reader error becomes the row's reason
        return None, f"the dataset {folder} does not read ({type(err).__name__}: {err})"


def identity_table(run, *, num: int = 32, seed: int | None = None, batch: int = 8,
                   network=None) -> dict:
    """Table 4 of a loaded run (module docstring).

    Args:
      run: a `face3d_train.trained.TrainedModel` of a teacher-world run.
      num: N >= 1 held-out identities; seed: their draw (default the run's
        `eval.seed`); batch: identities per compiled call.
      network: F (default: the run's, `run_identity_network`).
    Returns:
      A result dict (face3d_eval.tables): name "identity", step, num, seed,
      truncation, network (F's description), columns {key: label},
      rows {key: description}, similarity {"F": {row: {column: mean cosine}},
      "backbone": ...}, sem {"F": ..., "backbone": ...} (standard errors over
      the identities), per_identity {"F": {row: {column: [N floats]}}},
      unavailable {row: reason}, seconds, tables.
    Raises:
      ValueError: num < 1, or a run whose images have no teacher truth.
    """
    from face3d_jax import teacher as tt
    from face3d_train.data import generate_config

    if num < 1 or batch < 1:
        raise ValueError(f"num and batch must be at least 1, got {num} and {batch}")
    gen = generate_config(run.config)
    if gen.source != "teacher":
        raise ValueError(f"{run.workdir}: the run's images come from a {gen.source!r} source; "
                         "this table needs the teacher world (held-out identities)")
    start = time.perf_counter()
    seed = int(run.config.eval.seed) if seed is None else int(seed)
    network = run_identity_network(run) if network is None else network
    embed = FaceEmbedder(network)
    held = tt.make_held_out(run.source.world, jax.random.key(seed), num, run.crop_size,
                            truncation=gen.truncation, batch=batch)
    images_u8 = np.round(np.asarray(held.image) * 255.0).astype(np.uint8)
    faces = run.faces_from_crops(held.crop, held.w, images_u8, batch)
    mean, mean_reason = dataset_mean_albedo(run)
    unavailable = {} if mean is not None else {"mean_a_gt": mean_reason}
    rows = [r for r in ROWS if r not in unavailable]
    views = _views_fn(run.model, run.render_size)
    pseudo = _pseudo_fn(gen, run.model)
    keys = ["over_crop", "same_pose"] + [f"yaw{y:+.0f}" for y in YAWS]
    cos = {net: {r: {k: [] for k in keys} for r in rows} for net in ("F", "backbone")}
    for s in range(0, num, batch):
        real = min(batch, num - s)
        idx = np.minimum(np.arange(s, s + batch), num - 1)
        crop = jnp.asarray(held.crop[idx])
        src_raw, src_f = embed(crop, held.landmarks[idx])
        codes = {k: jnp.asarray(v[idx]) for k, v in faces.codes.items()}
        dmap = jnp.asarray(faces.displacement[idx])
        imgs, m_fit, target = _fit_inputs(run, held.w[idx], gen)
        a_gt, texture, naive = pseudo(jnp.asarray(imgs), jnp.asarray(m_fit),
                                      jnp.asarray(target))
        albedos = {"ours": faces.albedo[idx], "a_gt": a_gt, "texture": texture,
                   "naive_texture": naive, "true_albedo": held.albedo[idx]}
        if mean is not None:
            albedos["mean_a_gt"] = np.broadcast_to(mean, (batch,) + mean.shape)
        for r in rows:
            images, lmk = views(codes, dmap, jnp.asarray(albedos[r], jnp.float32), crop)
            for k, im, lm in zip(keys, images, lmk):
                raw, f = embed(im, lm)
                cos["F"][r][k].append(cosine(f, src_f)[:real])
                cos["backbone"][r][k].append(cosine(raw, src_raw)[:real])
    per_identity = {net: {r: _columns({k: np.concatenate(v) for k, v in by_key.items()})
                          for r, by_key in by_row.items()} for net, by_row in cos.items()}
    nets = ["F", "backbone"] if network.head is not None else ["F"]
    def over_rows(stat):
        return {n: {r: {c: stat(v) for c, v in per_identity[n][r].items()} for r in rows}
                for n in nets}

    result = {
        "name": "identity", "workdir": str(run.workdir), "step": run.step, "num": num,
        "seed": seed, "truncation": float(gen.truncation),
        "network": network_description(network), "columns": dict(COLUMNS), "rows": dict(ROWS),
        "similarity": over_rows(lambda v: float(np.mean(v))),
        "sem": over_rows(lambda v: float(np.std(v) / np.sqrt(len(v)))),
        "per_identity": over_rows(lambda v: [float(x) for x in v]),
        "unavailable": unavailable, "seconds": time.perf_counter() - start}
    result["tables"] = display_tables(result)
    return result


def _columns(by_key: dict) -> dict:
    """Per-identity cosines of each render -> the table's columns (+- averaged)."""
    out = {"same_pose": by_key["same_pose"], "yaw_0": by_key["yaw+0"]}
    for y in (15, 30, 45):
        out[f"yaw_{y}"] = 0.5 * (by_key[f"yaw+{y}"] + by_key[f"yaw-{y}"])
    out["over_crop"] = by_key["over_crop"]
    return out


def display_tables(result: dict) -> list[dict]:
    """The paper's layout (rows: albedos; columns: same pose, 0, +-15, +-30,
    +-45, then over crop) for F and, with a head, the backbone alone."""
    out = []
    cols = list(result["columns"])
    for net in result["similarity"]:
        title = (f"Table 4: identity similarity to the source, F = {result['network']}"
                 if net == "F" else "The same with F's backbone alone (no head)")
        rows = []
        for r, label in result["rows"].items():
            if r in result["unavailable"]:
                rows.append([label, result["unavailable"][r]] + [None] * (len(cols) - 1))
            else:
                rows.append([label] + [result["similarity"][net][r][c] for c in cols])
        notes = [(f"{result['num']} held-out teacher identities (seed {result['seed']}), "
                 f"step {result['step']}; cosine of F's embeddings, mean over identities "
                 "(± pairs averaged); renders on grey, 'over crop' over the source crop "
                 "(the trainer's eval/id_similarity for G_Ab's albedo)")] if net == "F" else []
        out.append(tables.table(title, ["albedo"] + [result["columns"][c] for c in cols], rows,
                                notes))
    return out


def format_table(result: dict) -> str:
    """The result's tables as Markdown text."""
    return tables.markdown(result["tables"])


def run_identity(workdir, *, step: int | None = None, num: int = 32, seed: int | None = None,
                 batch: int = 8, out=None) -> dict:
    """`face3d eval identity`: loads a run, computes `identity_table`, writes
    the JSON (default <workdir>/eval/identity.json), prints the table and
    returns the result (its "path": where the JSON went).

    Raises FileNotFoundError (no run folder, config or checkpoint) or
    ValueError (a bad num, a run without a teacher world), one line each.
    """
    from face3d_train.trained import load_run

    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    run = load_run(workdir, step)
    result = identity_table(run, num=num, seed=seed, batch=batch)
    path = tables.write_result(result, out or tables.default_path(workdir, "identity"))
    result["path"] = str(path)
    print(format_table(result))
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return result
