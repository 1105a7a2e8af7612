"""The paper's config shrunk for a 2-core CPU: `face3d train --config tiny` in
the teacher world in under 20 minutes, learning measurably.

Everything not overridden here is `paper.py`'s, including every loss weight.
What changes: sizes (128^2 images, 64^2 crops and albedo, 32^2 displacement,
StyleGAN2 channels capped at 32, 2 mapping layers), a tiny dataset made on the
fly, E_shape on the shipped dlib face network (pretrained, offline) instead of
ArcFace's iresnet100, F given a head fitted on teacher identities (an aid the
paper does not need: its F sees real faces), a short schedule and, for it, a
10x larger learning rate of E_shape's heads and G_Disp.
"""

from __future__ import annotations

from face3d_train.configs import paper


def get_config():
    c = paper.get_config()
    c.name = "tiny"
    c.data.generate.update(dict(
        identities=32, edits=6, resolution=128, teacher_albedo_size=64, albedo_size=64,
        crop_size=64, fit_size=128, fit_steps=150, rigid_steps=50, batch=16))
    # dlib has no ArcFace embedding for MICA's mapping: the linear head gives the shape.
    c.model.encoder.update(dict(backbone="dlib", input_size=96, shape_head="linear"))
    c.model.albedo.update(dict(resolution=64, channel_max=32, n_mlp=2))
    c.model.displacement.update(dict(resolution=32, channel_max=32, n_mlp=2))
    # F on the teacher world's faces: dlib's network on its own 150^2 chip (at
    # 96^2 it told the held-out identities apart less often, 88% rank-1 against
    # 97%, for about the same time per step) with a head fitted on 256 teacher
    # identities (`face3d_train.identity`: its embeddings of synthetic faces lie
    # close together).
    c.model.identity.world_head.identities = 256
    c.model.render_size = 64
    c.schedule.update(dict(total_steps=500, albedo_pretrain_steps=100, shape_steps=50,
                           albedo_steps=25))
    # A few hundred steps instead of the paper's hundreds of thousands: the
    # heads and G_Disp at 1e-3 rather than 1e-4, or E_shape barely leaves the
    # mean face; the pretrained backbone keeps the paper's 1e-4 (at 1e-3 its
    # first Adam steps wrecked its features and the landmarks diverged).
    c.optim.shape.lr = 1e-3
    c.optim.shape.backbone_lr_scale = 0.1
    c.optim.shape.frozen_backbone_stages = 0  # dlib's network: no iresnet stages
    c.optim.gan.update(dict(ema_kimg=0.5, ema_rampup=0.05))
    c.checkpoint.update(dict(every=100, keep=2))
    c.log.update(dict(every=10, images_every=200))
    c.eval.update(dict(every=100, identities=16))
    # XLA:CPU ran the lax.switch step about 3x slower than the same phases
    # compiled alone (loop.py's docstring): one executable per phase here.
    c.selector = "phase"
    return c
