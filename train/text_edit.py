"""`face3d edit --text`: StyleCLIP's latent optimisation (Patashnik et al.
2021, `run_optimization.py`) on a trained run, the paper's Sec. 5.5 (issue 22).

    model, tokenizer = load_clip("ViT-B-32.pt")       # OpenAI's file, or a state dict
    run = trained.load_run("runs/tiny")
    result = edit_text(run, run.w_from_seeds([7]), "a smiling face", model, tokenizer)
    write_text_edit(run, result, "out/", "smile")

w+ (all L rows of w) starts at w0 and is optimised with Adam under StyleCLIP's
learning-rate ramp (`reconstruct.learning_rate`, which is rosinality's and
StyleCLIP's `get_lr`) to minimise, in StyleCLIP's "edit" mode,

    D_CLIP(G(w), t) + l2_lambda ||w - w0||^2 + id_lambda (1 - cos(F(G(w)), F(G(w0))))

with G the run's image source (`source.image_fn()`, the teacher world by
default) and D_CLIP StyleCLIP's `CLIPLoss`, 1 - logit_scale cos(E_I, E_T) / 100
(`clip_loss`). The edited w then goes through E_shape, G_Disp and G_Ab as
any w does, so the 3D face follows the text.

Where it differs from StyleCLIP:
- CLIP's input. StyleCLIP brings a 1024 px image to 224 with a nearest
  `Upsample(scale_factor=7)` then `AvgPool2d(1024 // 32)`; `styleclip_resize`
  is the same linear map for any resolution R (nearest x u, average over
  k x k, u = 224 / gcd(R, 224), k = R / gcd(R, 224): exact for every R, and
  for R = 1024 or 256 it is StyleCLIP's u and k), applied as a (224, R) matrix
  on each axis instead of materialising the R u side. Not `clip_preprocess`'s
  bicubic resize, as StyleCLIP does not use CLIP's preprocess here. As
  StyleCLIP, the image goes in as the generator's [-1, 1] output (2 x - 1),
  without CLIP's mean/std normalisation (the default, the cited source's
  choice); `StyleClipConfig.clip_normalise = True` normalises the [0, 1]
  image with CLIP_MEAN / CLIP_STD instead, what CLIP was trained on.
- The text embedding is computed once, not at every step (the same value).
- The identity term. StyleCLIP's IDLoss crops a fixed box of the
  FFHQ-aligned image for ArcFace. Our F is the run's identity network
  (`models.identity_network` with the run's head, as `eval/identity_poses`
  builds it) and both images are aligned into F's chip by one matrix, from
  w0's landmarks (the teacher's true landmarks, or dlib's where the run
  detects them): a fixed box, as StyleCLIP's, placed on this face. The cosine
  is F's (the head's when the run has one), as the run's identity term.
  id_lambda = 0 skips F (and its weights) altogether.
- The defaults are run_optimization.py's, but id_lambda: its argparse says
  0; its README's edit example (and the issue) 0.005. StyleCLIP's
  `--lr_rampup` is parsed but never passed to get_lr; ours is.
- The sources have constant noise inputs (StyleCLIP: randomize_noise=False),
  and nothing in the optimisation is random: no PRNG key.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from face3d_jax import losses as L
from face3d_jax.nets.clip import CLIP_MEAN, CLIP_STD
from face3d_train import face_files as ff
from face3d_train.generate import VIEW_SIZE, views_of
from face3d_train.reconstruct import learning_rate
from face3d_train.trained import PAPER_YAWS, TrainedModel

MODES = ("edit", "free_generation")
CLIP_HINT = ("OpenAI's released ViT-B/32 weights: the ViT-B-32.pt TorchScript file that "
             "clip.load('ViT-B/32') downloads (read without running its code), or a state "
             "dict (torch.save(clip.load('ViT-B/32')[0].state_dict(), PATH)), or open_clip's "
             "ViT-B-32 'openai' pretrained weights saved with torch.save(model.state_dict(), "
             "PATH)")


@dataclasses.dataclass(frozen=True)
class StyleClipConfig:
    """run_optimization.py's defaults (module docstring for id_lambda).

    steps, lr: Adam's steps and peak learning rate, ramped by
    `styleclip_lr` (lr_rampup, lr_rampdown: fractions of the steps).
    l2_lambda, id_lambda: the weights of ||w - w0||^2 and of F's 1 - cosine.
    mode: "edit" (the full loss) or "free_generation" (the CLIP loss alone).
    clip_normalise: CLIP's mean/std on [0, 1] images (True) or StyleCLIP's
    raw [-1, 1] input (False, StyleCLIP's and the default).
    """

    steps: int = 300
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    l2_lambda: float = 0.008
    id_lambda: float = 0.005
    mode: str = "edit"
    clip_normalise: bool = False

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        for name in ("lr", "l2_lambda", "id_lambda"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("lr_rampup", "lr_rampdown"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


def styleclip_lr(t, lr: float, rampdown: float = 0.25, rampup: float = 0.05):
    """StyleCLIP's get_lr at progress t = step / steps in [0, 1] (float or
    array): lr * (0.5 - 0.5 cos(pi min(1, (1 - t) / rampdown))) * min(1, t /
    rampup). The same formula as rosinality's projector, so it is
    `reconstruct.learning_rate`."""
    return learning_rate(t, lr, rampdown, rampup)


@dataclasses.dataclass
class TextEdit:
    """One text edit (numpy arrays).

    prompt: the text. w0, w: (1, L, 512) float32, the start and the edited
    latent. losses, clip_losses, l2, id_losses: (steps,) float32 at each step,
    before its update (as StyleCLIP logs them): the total, D_CLIP,
    ||w - w0||^2 and 1 - cos of F (0 when id_lambda is 0).
    image_before, image_after: (1, R, R, 3) float32 in [0, 1], the source's
    images of w0 and w. config: the `StyleClipConfig` used.
    """

    prompt: str
    w0: np.ndarray
    w: np.ndarray
    losses: np.ndarray
    clip_losses: np.ndarray
    l2: np.ndarray
    id_losses: np.ndarray
    image_before: np.ndarray
    image_after: np.ndarray
    config: StyleClipConfig


def styleclip_resize_matrix(resolution: int, size: int = 224) -> np.ndarray:
    """StyleCLIP's nearest upsample by u then size-k average pool along one
    axis as a (size, resolution) float32 matrix (module docstring): row i
    averages the k upsampled pixels of output i, each a copy of source
    pixel p // u."""
    r, s = int(resolution), int(size)
    if r < 1 or s < 1:
        raise ValueError(f"resize {resolution} -> {size}: sides must be at least 1")
    g = math.gcd(r, s)
    up, pool = s // g, r // g  # r * up == s * pool
    p = np.arange(r * up)
    mat = np.zeros((s, r), np.float64)
    np.add.at(mat, (p // pool, p // up), 1.0 / pool)
    return mat.astype(np.float32)


def styleclip_resize(images, size: int = 224) -> jax.Array:
    """images (B, R, R, 3) float -> (B, size, size, 3) float32, StyleCLIP's
    upsample-then-average-pool (`styleclip_resize_matrix`), differentiable."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ValueError(f"images of shape {images.shape}: expected (B, R, R, 3)")
    mat = jnp.asarray(styleclip_resize_matrix(images.shape[1], size))
    return jnp.einsum("ih,bhwc,jw->bijc", mat, images, mat)


def clip_input(images, size: int = 224, normalise: bool = False) -> jax.Array:
    """What StyleCLIP's CLIPLoss gives CLIP: images (B, R, R, 3) float in
    [0, 1] -> (B, size, size, 3) float32, resized (`styleclip_resize`) then
    mapped to [-1, 1] as StyleCLIP's generator output is (the default), or
    with normalise=True CLIP-normalised."""
    x = styleclip_resize(images, size)
    if not normalise:
        return x * 2.0 - 1.0
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def text_features(clip_model, tokenizer, prompt: str) -> jax.Array:
    """CLIP's text embedding of one prompt: (1, embed_dim) float32, not
    normalised."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt {prompt!r}: expected a non-empty text")
    tokens = tokenizer(prompt, context_length=clip_model.cfg.context_length)
    return clip_model.encode_text(jnp.asarray(tokens, jnp.int32))


def clip_loss(clip_model, images, text, normalise: bool = False) -> jax.Array:
    """StyleCLIP's CLIPLoss, 1 - logits_per_image / 100, logits = exp(
    logit_scale) cos(E_I(image), text).

    clip_model: a `nets.clip.CLIP`; images (B, R, R, 3) float in [0, 1];
    text (1, D) float32 (`text_features`). Returns (B,) float32."""
    x = clip_input(images, clip_model.cfg.image_size, normalise)
    img = clip_model.encode_image(x)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    logits = jnp.exp(clip_model.logit_scale[...]) * img @ txt.T
    return 1.0 - logits[:, 0] / 100.0


def _identity_network(run: TrainedModel):
    """F of the run with its head (read, or fitted as the trainer does, from
    <workdir>/identity_head.npz), as `eval/identity_poses.run_identity_network`."""
    from face3d_train.identity import ensure_identity_head
    from face3d_train.models import identity_network

    head = ensure_identity_head(run.config, run.workdir, model=run.model, progress=False)
    return identity_network(run.config.model, head)


def _w0_landmarks(run: TrainedModel, w0: np.ndarray) -> np.ndarray:
    """w0's landmarks (1, 68, 2) float32, image index coordinates, as the run
    finds them (the teacher's truth, or dlib's)."""
    images, truth = run.source.render(w0)
    lmk = truth if run.landmark_mode == "truth" else run.detect(images)
    if not np.isfinite(lmk).all():
        raise ValueError("no face found in the source image of w0 (the identity term aligns "
                         "F by its landmarks): use id_lambda 0")
    return np.asarray(lmk, np.float32)


def styleclip_optimizer() -> optax.GradientTransformation:
    """StyleCLIP's torch.optim.Adam (its defaults: betas 0.9, 0.999, eps 1e-8)
    without the learning rate, which `styleclip_step` applies as an argument."""
    return optax.scale_by_adam()


def styleclip_step(render, clip_graph, f_graph=None, normalise: bool = False,
                   optimizer: optax.GradientTransformation | None = None):
    """One step of StyleCLIP's latent optimisation, jitted.

    Args:
      render: w (1, L, 512) float32 -> (1, H, W, 3) float32 image in [0, 1]
        (an image source's `image_fn()`), traced into the step.
      clip_graph: the graph of `nnx.split(clip_model)`; its state is an argument.
      f_graph: the graph of the identity network F, or None for no identity term.
      normalise: CLIP's mean/std on the image instead of StyleCLIP's [-1, 1].
      optimizer: default `styleclip_optimizer()`.
    Returns:
      step(w, opt_state, lr, weights, w0, text, id_target, mats, clip_state,
      f_state) -> (w', opt_state', parts): lr a float32 scalar; weights (2,)
      float32 (l2_lambda, id_lambda); w0 like w; text (1, D) float32 CLIP
      text features; id_target (1, E) F's target embedding and mats F's chip
      matrices (`chip_matrices`; both ignored without F); parts (4,) float32 (total, CLIP,
      l2, identity) at w, before the update.
    """
    optimizer = optimizer or styleclip_optimizer()

    def loss(w, weights, w0, text, id_target, mats, clip_state, f_state):
        image = render(w)
        c = clip_loss(nnx.merge(clip_graph, clip_state), image, text, normalise)[0]
        l2 = jnp.sum(jnp.square(w - w0))
        ident = jnp.zeros((), jnp.float32)
        if f_graph is not None:
            emb = nnx.merge(f_graph, f_state).embed(image, mats)[0]
            ident = L.identity_loss(emb, id_target)
        total = c + weights[0] * l2 + weights[1] * ident
        return total, jnp.stack([total, c, l2, ident])

    @jax.jit
    def step(w, opt_state, lr, weights, w0, text, id_target, mats, clip_state, f_state):
        grad, parts = jax.grad(loss, has_aux=True)(w, weights, w0, text, id_target, mats,
                                                   clip_state, f_state)
        updates, opt_state = optimizer.update(grad, opt_state, w)
        return w - lr * updates, opt_state, parts

    return step


class TextEditor:
    """StyleCLIP's optimisation compiled once for a run and a CLIP: the step
    takes the learning rate and the loss weights as arguments, so edits with
    other prompts, steps, lr or lambdas reuse the program (one per
    (identity term on/off, clip_normalise)). F is built on the first edit
    with id_lambda > 0.

    Args:
      run: a `TrainedModel`; clip_model: a `nets.clip.CLIP`; tokenizer: a
        `CLIPTokenizer` (`load_clip` gives both).
    """

    def __init__(self, run: TrainedModel, clip_model, tokenizer):
        self.run, self.clip_model, self.tokenizer = run, clip_model, tokenizer
        self._clip_graph, self._clip_state = nnx.split(clip_model)
        self._render = jax.jit(run.source.image_fn())
        self._identity = None  # (graph, state, network) once built
        self._steps: dict = {}
        self._adam = styleclip_optimizer()

    def _f(self):
        if self._identity is None:
            f = _identity_network(self.run)
            self._identity = (*nnx.split(f), f)
        return self._identity

    def _step(self, with_identity: bool, normalise: bool):
        key = (with_identity, normalise)
        if key not in self._steps:
            self._steps[key] = self._build_step(with_identity, normalise)
        return self._steps[key]

    def _build_step(self, with_identity: bool, normalise: bool):
        f_graph = self._f()[0] if with_identity else None
        return styleclip_step(self.run.source.image_fn(), self._clip_graph, f_graph, normalise,
                              self._adam)

    def edit(self, w0, prompt: str, config: StyleClipConfig = StyleClipConfig(), *,
             progress: bool = True) -> TextEdit:
        """`edit_text` with this editor's run and CLIP (its docstring)."""
        from tqdm import tqdm

        run = self.run
        w0 = run.check_w(w0)
        if len(w0) != 1:
            raise ValueError(f"edit_text takes one latent, got {len(w0)}")
        text = text_features(self.clip_model, self.tokenizer, prompt)
        w0j = jnp.asarray(w0)
        image0 = self._render(w0j)
        edit = config.mode == "edit"
        # "free_generation" is the CLIP loss alone: both weights 0.
        weights = jnp.asarray([config.l2_lambda if edit else 0.0,
                               config.id_lambda if edit else 0.0], jnp.float32)
        with_identity = edit and config.id_lambda > 0
        id_target, mats, f_state = jnp.zeros((1, 1), jnp.float32), jnp.eye(3)[None], None
        if with_identity:
            _, f_state, f = self._f()
            # One chip for both images, from w0's landmarks: StyleCLIP's fixed box.
            mats = f.chip_matrices(jnp.asarray(_w0_landmarks(run, w0)))
            id_target = f.embed(image0, mats)[0]
        step = self._step(with_identity, bool(config.clip_normalise))
        steps = int(config.steps)
        w, opt_state, parts = w0j, self._adam.init(w0j), []
        for i in tqdm(range(steps), desc="text edit", unit="step", disable=not progress):
            # StyleCLIP sets the lr of step i at t = i / steps before stepping.
            lr = styleclip_lr(i / steps, config.lr, config.lr_rampdown, config.lr_rampup)
            w, opt_state, values = step(w, opt_state, jnp.float32(lr), weights, w0j, text,
                                        id_target, mats, self._clip_state, f_state)
            parts.append(values)
        parts = np.asarray(jnp.stack(parts), np.float32)
        if not np.isfinite(parts).all():
            raise ValueError(f"text edit {prompt!r}: the loss became non-finite (lower lr)")
        image1 = self._render(w)
        return TextEdit(prompt=prompt, w0=w0, w=np.asarray(w, np.float32),
                        losses=parts[:, 0], clip_losses=parts[:, 1], l2=parts[:, 2],
                        id_losses=parts[:, 3],
                        image_before=np.clip(np.asarray(image0, np.float32), 0.0, 1.0),
                        image_after=np.clip(np.asarray(image1, np.float32), 0.0, 1.0),
                        config=config)


def edit_text(run: TrainedModel, w0, prompt: str, clip_model, tokenizer,
              config: StyleClipConfig = StyleClipConfig(), *, progress: bool = True) -> TextEdit:
    """StyleCLIP's latent optimisation of one face toward a text prompt.

    Args:
      run: a `TrainedModel`; w0: one latent, (1, L, 512) float (or a shape
        `TrainedModel.check_w` broadcasts: (1, 512), (512,)).
      prompt: the text; clip_model: a `nets.clip.CLIP`; tokenizer: a
        `CLIPTokenizer` (`load_clip` gives both).
      config: a `StyleClipConfig`; progress: a tqdm bar.
    Returns:
      A `TextEdit`. Several edits of one run: `TextEditor(...).edit`, which
      compiles once.
    Raises:
      ValueError (one line): several latents, an empty prompt, or no face in
      w0's image when the identity term needs its landmarks.
    """
    return TextEditor(run, clip_model, tokenizer).edit(w0, prompt, config, progress=progress)


def _curve_png(path, result: TextEdit) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, x = result.config, np.arange(1, len(result.losses) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(x, result.losses, label="total")
    ax.plot(x, result.clip_losses, label="CLIP")
    if c.mode == "edit":
        ax.plot(x, c.l2_lambda * result.l2, label=f"{c.l2_lambda:g} x L2")
        if c.id_lambda > 0:
            ax.plot(x, c.id_lambda * result.id_losses, label=f"{c.id_lambda:g} x ID")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(result.prompt[:60], fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_text_edit(run: TrainedModel, result: TextEdit, out_dir, name: str = "text_edit",
                    *, size: int = VIEW_SIZE) -> list[Path]:
    """Writes a text edit into out_dir: the 3D faces of w0 and of the edited
    w as `face3d generate` writes a face (`face_files`: NAME_original.* and
    NAME_edited.*: GLB, OBJ, displacement, renders at the paper's yaws, npz;
    the edited npz also holds the prompt and the loss curves),
    NAME_strip.png (top: the source images before / after, bottom: the
    frontal renders), NAME_loss.png (the loss curves), NAME_w.npy and
    NAME_w_edit.npy ((1, L, 512) float32). Returns the paths written."""
    if not name or any(ch.isspace() or ch in "/\\" for ch in name):
        raise ValueError(f"name {name!r}: expected a file stem without spaces or slashes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    faces = run.faces(np.concatenate([result.w0, result.w]))
    views = views_of(run, faces, PAPER_YAWS, size)
    curves = {"prompt": np.str_(result.prompt), "losses": result.losses,
              "clip_losses": result.clip_losses, "l2": result.l2,
              "id_losses": result.id_losses}
    paths = []
    for i, (stem, extra) in enumerate(((f"{name}_original", None), (f"{name}_edited", curves))):
        paths += ff.write_face(out, stem, faces, i, run.model, views=views[i], yaws=PAPER_YAWS,
                               max_displacement=run.max_displacement, extra=extra)
    front = PAPER_YAWS.index(0.0)
    grid = np.concatenate([ff.strip([faces.image[0], faces.image[1]], size),
                           ff.strip([views[0, front], views[1, front]], size)], axis=0)
    paths.append(ff.write_png(out / f"{name}_strip.png", grid))
    paths.append(_curve_png(out / f"{name}_loss.png", result))
    for stem, w in ((f"{name}_w", result.w0), (f"{name}_w_edit", result.w)):
        np.save(out / f"{stem}.npy", np.asarray(w, np.float32))
        paths.append(out / f"{stem}.npy")
    return paths


def load_clip(path, vocab=None):
    """CLIP and its tokenizer: (a `nets.clip.CLIP`, a `CLIPTokenizer`).

    path: OpenAI's released TorchScript archive (ViT-B-32.pt) or a torch.save'd
    CLIP state dict (`convert.clip.convert_clip`; sizes inferred from its
    shapes; float16 weights upcast to float32). vocab:
    bpe_simple_vocab_16e6.txt.gz (default: the copy in an installed open_clip
    or clip package, `find_bpe_vocab`).
    Raises (one line): ValueError without a path, saying which file to give;
    FileNotFoundError for a missing file; the converter's ValueError for a
    file that holds no CLIP weights.
    """
    from face3d_jax.convert.clip import convert_clip
    from face3d_jax.nets.clip_tokenizer import CLIPTokenizer, find_bpe_vocab

    if path is None or not str(path).strip():
        raise ValueError(f"no CLIP weights given: supply --clip FILE, {CLIP_HINT}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CLIP file (it should be {CLIP_HINT})")
    model = convert_clip(path)
    tokenizer = CLIPTokenizer(vocab or find_bpe_vocab(), context_length=model.cfg.context_length)
    return model, tokenizer
