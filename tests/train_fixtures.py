"""A micro training config and a small dataset in the training format, for the
trainer's tests (the real dataset pipeline is tested in test_dataset.py; here
only the trainer's mechanics are, so the records are random but well-formed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face3d_jax.data import tfds_builder

RES, CROP, ALBEDO = 32, 32, 16


def micro_config(dataset_dir: str = ""):
    """`tiny` shrunk until a step compiles in seconds on a 2-core CPU."""
    from face3d_train.configs import load

    c = load("tiny")
    c.data.dataset_dir = str(dataset_dir)
    c.data.identities_per_batch, c.data.images_per_identity = 2, 4
    c.data.generate.update(dict(resolution=RES, crop_size=CROP, albedo_size=ALBEDO,
                                teacher_albedo_size=ALBEDO, teacher_calibration=256))
    c.model.encoder.update(dict(backbone="iresnet18", widths=(8, 8, 16, 16), input_size=CROP))
    c.model.albedo.update(dict(resolution=ALBEDO, channel_max=16, n_mlp=1))
    c.model.displacement.update(dict(resolution=8, channel_max=8, n_mlp=1))
    c.model.identity.update(dict(chip_size=72))
    c.model.identity.world_head.identities = 0  # its fit is tested in test_identity.py
    c.prior.identities = 0  # the shape prior is tested in test_prior.py
    c.model.render_size = CROP
    c.schedule.update(dict(total_steps=6, albedo_pretrain_steps=2, shape_steps=2,
                           albedo_steps=2))
    c.optim.gan.update(dict(g_reg_every=2, d_reg_every=2))
    c.checkpoint.update(dict(every=2, keep=3))
    c.log.update(dict(every=1, images_every=1000))
    c.eval.update(dict(every=1000, identities=4))
    return c


def write_dataset(folder, identities: int = 4, per_identity: int = 4, seed: int = 0) -> Path:
    """A TFDS dataset with the features `face3d data generate` writes: random
    images, w and albedo; landmarks spread like a face's over the image."""
    rng = np.random.default_rng(seed)
    n = identities * per_identity
    folder = Path(folder)
    (folder / "work").mkdir(parents=True, exist_ok=True)
    base = rng.uniform(0.3, 0.7, (68, 2)) * RES
    used = (base[None] + rng.normal(0, 0.5, (n, 68, 2))).astype(np.float32)
    u8 = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)
    data = dict(w=rng.normal(size=(n, 18, 512)).astype(np.float32), image=u8(n, RES, RES, 3),
                landmarks=used, landmarks_truth=used, landmarks_used=used,
                crop=u8(n, CROP, CROP, 3), albedo=u8(n, ALBEDO, ALBEDO, 3),
                identity=np.repeat(np.arange(identities), per_identity).astype(np.int64),
                edit=np.tile(np.arange(per_identity), identities).astype(np.int32),
                **{f"label_{k}": np.zeros(n, np.float32) for k in tfds_builder.LABEL_NAMES})
    shard = folder / "work" / "shard_00000.npz"
    np.savez(shard, **data)
    groups = [[i, i * per_identity, per_identity] for i in range(identities)]
    spec = dict(resolution=RES, albedo_size=ALBEDO, crop_size=CROP, n_latent=18,
                style_dim=512, groups=groups, identities=identities)
    return tfds_builder.build(folder, [shard], spec)


def micro_run(folder, steps: int = 2) -> Path:
    """A finished `face3d train` workdir of `micro_config` (a random dataset
    beside it, no evaluation, `steps` steps, checkpoints at every other step):
    what a trained-run loader and the commands built on it read."""
    from face3d_train.loop import train

    folder = Path(folder)
    c = micro_config(str(write_dataset(folder / "data")))
    c.schedule.update(dict(total_steps=steps, albedo_pretrain_steps=1, shape_steps=1,
                           albedo_steps=1))
    c.eval.identities = 0
    train(c, folder / "run", progress=False)
    return folder / "run"
