"""The shape prior: E_shape trained with 3D supervision before alternating
descent, the part MICA plays in the paper.

    prior = ensure_shape_prior(config, "runs/tiny", setup)   # None: the config asks for none
    state = setup.init_state(key, prior)

The paper does not learn shape from images alone: its E_shape starts from
MICA (Sec. 5.2), an ArcFace backbone and mapping network trained on 3D scans
of 2300 people, and alternating descent fine-tunes it. In the paper config the
prior is MICA's own weights (`model.encoder.weights` = mica.tar, converted by
`face3d_jax.convert.mica`) and this stage is skipped (`prior.identities` 0).
In the teacher world every sample's true FLAME shape is known, so a config
can train its own prior instead (tiny: a dlib backbone, for which no MICA
weights exist):

  data   G identities seen K ways (`teacher.identity_views`: shape and albedo
         shared, expression, pose, light, camera and background free), drawn
         from a key of their own (`prior_key`; no dataset, evaluation or
         identity-head draw uses it), rendered and cropped as the training set
         is; the crops (uint8) and true shape codes are written chunk by chunk
         to <workdir>/shape_prior/data, so an interrupted run resumes;
  loss   MICA's (`losses.vertex_loss`): L1 between the neutral mesh of the
         predicted shape code and the true neutral mesh, in mm, weighted per
         vertex by MICA's region mask (`prior.face_weight` = 150 on the face, 1
         elsewhere). The procedural FLAME has no FLAME_masks.pkl, so NoW's face
         crop of the template (`metrics.now_face_mask`) stands for MICA's face
         region: the region the paper's shape metric scores;
  fit    with a linear shape head, first the head in closed form on the
         frozen backbone's features (`ridge_head`, which also sets the head's
         input statistics, `models.FeatureStats`); then Adam (MICA: 1e-4) for
         `prior.steps` steps on random batches, the backbone at lr x
         `backbone_lr_scale` (0: frozen), orbax checkpoints in
         <workdir>/shape_prior/checkpoints (resumable); the finished prior is
         marked by <workdir>/shape_prior/prior.json (its settings and figures).
Only the shape rows of E_shape's head and the backbone are trained; the
expression, pose, camera and light rows stay at their initial values (zero:
the mean face framed as the crop frames it) for alternating descent to learn.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from face3d_jax import losses as L
from face3d_jax import metrics
from face3d_jax import teacher as tt
from face3d_train.checkpoint import Checkpointer
from face3d_train.data import generate_config
from face3d_train.state import Setup, shape_optimizer

log = logging.getLogger(__name__)

PRIOR_DIR = "shape_prior"
DONE_FILE = "prior.json"
# Folded into the run's seed: a stream no dataset, evaluation or head draw uses.
_PRIOR_STREAM = 0x5_4A9E


def prior_key(seed: int) -> jax.Array:
    """The key the prior's identities are drawn from, for a run's seed."""
    return jax.random.fold_in(jax.random.key(int(seed)), _PRIOR_STREAM)


def prior_settings(config) -> dict | None:
    """What the prior of `config` depends on; None when the config asks for none
    (`prior.identities` 0, or E_shape loaded from weights: MICA's are the prior)."""
    p = config.get("prior")
    if p is None or int(p.identities) == 0:
        return None
    if config.model.encoder.get("weights"):
        log.info("shape prior: E_shape starts from %s, so the prior stage is skipped",
                 config.model.encoder.weights)
        return None
    gen = generate_config(config)
    if gen.source != "teacher":
        raise ValueError("prior is trained on the teacher world's true shapes; data.generate."
                         f"source is {gen.source!r} (set prior.identities=0 and give "
                         "model.encoder.weights)")
    enc = config.model.encoder
    return dict(identities=int(p.identities), views=int(p.views), steps=int(p.steps),
                batch=int(p.batch), lr=float(p.lr), backbone_lr_scale=float(p.backbone_lr_scale),
                face_weight=float(p.face_weight), chunk=int(p.chunk), seed=int(config.seed),
                backbone=str(enc.backbone), input_size=int(enc.input_size),
                shape_head=str(enc.shape_head), num_shape=int(config.model.num_shape),
                flame=str(config.model.get("flame") or ""), teacher_seed=int(gen.teacher_seed),
                resolution=int(gen.resolution), crop_size=int(gen.crop_size),
                teacher_calibration=int(gen.teacher_calibration),
                # The linear head's shape rows read unit-norm input
                # (`models.ShapeEncoder`); a prior saved before has other weights.
                shape_input="standardised/sqrt(width)")


def region_weights(model, face_weight: float) -> np.ndarray:
    """MICA's per-vertex weights: `face_weight` on NoW's face crop of the
    template, 1 elsewhere. (V,) float32."""
    template = metrics.neutral_vertices(model, jnp.zeros((1, 1), jnp.float32))
    face = np.asarray(metrics.now_face_mask(model, template))[0]
    return np.where(face, float(face_weight), 1.0).astype(np.float32)


def prior_data(settings: dict, world, folder: Path, *, progress: bool = True) -> dict:
    """The prior's samples, rendered chunk by chunk into `folder` (resumable).

    Returns {"crop": (N, c, c, 3) uint8, "shape": (N, S) float32 true codes},
    N = identities x views, identity-major.
    """
    folder.mkdir(parents=True, exist_ok=True)
    groups, views, chunk = settings["identities"], settings["views"], settings["chunk"]
    key = prior_key(settings["seed"])
    crops, shapes = [], []
    start_time = time.perf_counter()
    for index, first in enumerate(range(0, groups, chunk)):
        path = folder / f"chunk_{index:05d}.npz"
        count = min(chunk, groups - first)
        if not path.exists():
            w = tt.identity_views(world, jax.random.fold_in(key, index), count, views)
            held = tt.held_out_from_w(world, w, settings["crop_size"], batch=16)
            crop = np.clip(np.round(held.crop * 255.0), 0, 255).astype(np.uint8)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, crop=crop, shape=held.shape.astype(np.float32))
            tmp.rename(path)  # a chunk exists whole or not at all
            if progress:
                log.info("shape prior: %d of %d identities rendered (%.0f s)", first + count,
                         groups, time.perf_counter() - start_time)
        try:
            with np.load(path, allow_pickle=False) as data:
                crop, shape = data["crop"], data["shape"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} is unreadable ({type(err).__name__}); delete it to "
                             "render it again") from None
        if crop.shape[0] != count * views or shape.shape[0] != count * views:
            raise ValueError(f"{path}: {crop.shape[0]} samples, expected {count * views}; "
                             "delete it to render it again")
        crops.append(crop)
        shapes.append(shape)
    return dict(crop=np.concatenate(crops), shape=np.concatenate(shapes))


def pad_shape(shape: np.ndarray, num_shape: int) -> np.ndarray:
    out = np.zeros((shape.shape[0], num_shape), np.float32)
    k = min(num_shape, shape.shape[1])
    out[:, :k] = shape[:, :k]
    return out


def _features(setup: Setup, params, buffers, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    """What E_shape's shape head reads (`ShapeEncoder.shape_features`) of uint8
    crops (N, c, c, 3): (N, D) float64."""
    graph = setup.graphs["encoder"]
    fn = jax.jit(lambda p, x: nnx.merge(graph, p, buffers).shape_features(x))
    out = []
    for start in range(0, len(crops), batch):
        idx = np.minimum(np.arange(start, start + batch), len(crops) - 1)
        x = jnp.asarray(crops[idx], jnp.float32) / 255.0
        out.append(np.asarray(fn(params, x), np.float64)[:min(batch, len(crops) - start)])
    return np.concatenate(out)


def ridge_head(setup: Setup, settings: dict, data: dict, params, buffers):
    """E_shape with the shape rows of its linear head solved in closed form on
    the frozen backbone's features, and the head's `FeatureStats` set to
    their mean and spread over the prior's crops: ridge regression of the
    true codes on the standardised features, the penalty chosen on the last
    tenth of the identities (by `losses.vertex_loss`, the fit's own loss) and
    the head then refitted on all. For a linear head this is the exact
    minimiser of the region-weighted squared vertex error plus a ridge
    penalty measured in the same weighted vertex space (the weighting then
    drops out of the solution); it starts the gradient fit where Adam from
    the zero head got only after hundreds of steps (300 steps: 85% of the
    mean face's error against 75%).
    Returns (params, buffers, penalty, validation vertex loss)."""
    num_shape = setup.layout.num_shape
    x = _features(setup, params, buffers, data["crop"])
    y = pad_shape(data["shape"], num_shape).astype(np.float64)
    held = max(1, settings["identities"] // 10) * settings["views"]
    weights = jnp.asarray(region_weights(setup.model, settings["face_weight"]))
    truth = metrics.neutral_vertices(setup.model, jnp.asarray(y[-held:], jnp.float32))
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd

    def solve(z_fit, y_fit, penalty):
        y_mean = y_fit.mean(0)
        a = np.linalg.solve(z_fit.T @ z_fit + penalty * np.eye(z_fit.shape[1]),
                            z_fit.T @ (y_fit - y_mean))
        return a, y_mean  # codes = z @ a + y_mean

    scores = {}
    for penalty in (1.0, 10.0, 100.0, 1000.0, 10000.0):
        a, b = solve(z[:-held], y[:-held], penalty)
        pred = metrics.neutral_vertices(setup.model, jnp.asarray(z[-held:] @ a + b, jnp.float32))
        scores[penalty] = float(L.vertex_loss(pred, truth, weights))
    best = min(scores, key=scores.get)
    a, b = solve(z, y, best)
    encoder = nnx.merge(setup.graphs["encoder"], params, buffers)
    encoder.feature_mean[...] = jnp.asarray(mu, jnp.float32)
    encoder.feature_scale[...] = jnp.asarray(sd, jnp.float32)
    head = encoder.head
    # The forward pass scales the shape rows' input by shape_input_scale.
    kernel = jnp.asarray(a / encoder.shape_input_scale, jnp.float32)
    head.kernel[...] = head.kernel[...].at[:, :num_shape].set(kernel)
    head.bias[...] = head.bias[...].at[:num_shape].set(jnp.asarray(b, jnp.float32))
    _, params, buffers = nnx.split(encoder, nnx.Param, ...)
    return params, buffers, best, scores[best]


def make_prior_step(setup: Setup, tx, weights: np.ndarray):
    """The jitted update (params, opt_state, crops, shapes) -> (params,
    opt_state, loss): crops (B, c, c, 3) float32 in [0, 1], shapes (B, S)
    float32 true codes; params {"encoder": nnx.State of Param}."""
    graph = setup.graphs["encoder"]
    model = setup.model
    weights = jnp.asarray(weights)
    num_shape = setup.layout.num_shape

    @jax.jit
    def step(params, opt_state, buffers, crops, shapes):
        def loss_fn(p):
            out = nnx.merge(graph, p["encoder"], buffers)(crops)
            pred = metrics.neutral_vertices(model, out[:, :num_shape])
            return L.vertex_loss(pred, metrics.neutral_vertices(model, shapes), weights)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
        return params, opt_state, loss

    return step


def train_shape_prior(setup: Setup, settings: dict, data: dict, folder: Path, *,
                      progress: bool = True):
    """Fits E_shape's prior on `data` (`prior_data`), resuming from the
    checkpoints in `folder`. Returns (params, buffers, last loss): E_shape's
    nnx.States of Param and of its other variables."""
    params = {"encoder": setup.initial[0][0]["encoder"]}
    opt_cfg = ml_collections.ConfigDict(dict(
        lr=settings["lr"], b1=0.9, b2=0.999, backbone_lr_scale=settings["backbone_lr_scale"],
        frozen_backbone_stages=0))
    tx = shape_optimizer(opt_cfg)
    step_fn = make_prior_step(setup, tx, region_weights(setup.model, settings["face_weight"]))
    state = {"params": params, "opt_state": tx.init(params),
             "buffers": setup.initial[0][1]["encoder"]}
    steps, batch = settings["steps"], settings["batch"]
    crops, shapes = data["crop"], pad_shape(data["shape"], settings["num_shape"])
    every = max(1, steps // 4)
    with Checkpointer(folder, keep=1, save_every=every, async_save=False) as ckpt:
        start = ckpt.latest_step()
        if start is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
            state, meta = ckpt.restore(abstract, start)
            loss = float(meta.get("loss", float("nan")))
            log.info("shape prior: resumed at step %d of %d", start, steps)
        else:
            start, loss = 0, float("nan")
            if settings["shape_head"] == "linear":
                begin = time.perf_counter()
                encoder, buffers, penalty, score = ridge_head(
                    setup, settings, data, params["encoder"], state["buffers"])
                state.update(params={"encoder": encoder}, buffers=buffers)
                log.info("shape prior: linear head solved (ridge %g, validation vertex loss "
                         "%.2f, %.0f s)", penalty, score, time.perf_counter() - begin)
                # Step 0: a resumed run does not solve it again.
                ckpt.save(0, state, {"step": 0, "loss": score}, force=True)
        begin = time.perf_counter()
        for step in range(start, steps):
            # One permutation per pass over the data, from the step: resumable.
            per_pass = max(1, len(crops) // batch)
            order = np.random.default_rng([settings["seed"], step // per_pass]).permutation(
                len(crops))
            idx = order[(step % per_pass) * batch:(step % per_pass + 1) * batch]
            p, o, loss_arr = step_fn(state["params"], state["opt_state"], state["buffers"],
                                     jnp.asarray(crops[idx], jnp.float32) / 255.0,
                                     jnp.asarray(shapes[idx]))
            loss = float(loss_arr)
            if not np.isfinite(loss):
                raise RuntimeError(f"shape prior: non-finite loss at step {step}; the last "
                                   f"checkpoint is in {folder}")
            state.update(params=p, opt_state=o)
            done = step + 1
            if progress and (done % 50 == 0 or done == steps):
                log.info("shape prior: step %d of %d, vertex loss %.3f (%.0f s)", done, steps,
                         loss, time.perf_counter() - begin)
            ckpt.save(done, state, {"step": done, "loss": loss}, force=done == steps)
        ckpt.wait()
    return state["params"]["encoder"], state["buffers"], loss


def ensure_shape_prior(config, workdir, setup: Setup, *, progress: bool = True):
    """E_shape's prior for a run: read from <workdir>/shape_prior, or trained
    there when missing or unfinished. Returns (params, buffers), E_shape's
    nnx.States of Param and of its other variables (the head's
    `FeatureStats`), or None when the config asks for none (`prior_settings`).

    Raises ValueError when <workdir>/shape_prior holds a prior trained with
    other settings (one line naming the file).
    """
    settings = prior_settings(config)
    if settings is None:
        return None
    folder = Path(workdir) / PRIOR_DIR
    done = folder / DONE_FILE
    if done.exists():
        saved = json.loads(done.read_text()).get("settings")
        if saved != settings:
            changed = sorted(k for k in set(settings) | set(saved or {})
                             if (saved or {}).get(k) != settings.get(k))
            raise ValueError(f"{done} was trained with other settings ({', '.join(changed)}); "
                             f"delete {folder} to train the prior again")
    start = time.perf_counter()
    from face3d_jax.data.dataset_sources import TeacherSource

    world = TeacherSource(generate_config(config), setup.model).world
    data = prior_data(settings, world, folder / "data", progress=progress)
    params, buffers, loss = train_shape_prior(setup, settings, data, folder / "checkpoints",
                                              progress=progress)
    if not done.exists():
        done.write_text(json.dumps(dict(settings=settings, final_loss=loss,
                                        seconds=round(time.perf_counter() - start, 1)),
                                   indent=2) + "\n")
        log.info("trained the shape prior in %.0f s: %s", time.perf_counter() - start, folder)
    return params, buffers
