"""The paper's configuration (Sec. 3.3, 4, 5.2), for GPU/TPU pods.

Sizes: AlbedoGAN at 1024^2 (config F, channel multiplier 2, as the authors'
script), G_Disp a StyleGAN2 generator at 256^2 (the authors' released code),
E_shape on 224^2 crops, 300 shape and 50 expression coefficients.

Weights, by the names of `face3d_train.terms.TERMS`:
  pretrain (Sec. 3.3, 5.2): GAN + identity between A_AbGAN and A_GT, lambda_ID 1.
  shape (Sec. 4.2, 5.2): id 0.5, perc 1, lmk 5, sc 1, reg 1e-4; Adam 1e-4.
  albedo (Sec. 5.2): rendering sym_rec 1, id 1, perc 1, lmk 0.5; albedo-space
    sym_rec 0.1 and id 0.1; the GAN loss kept (weight 1).
GAN (Sec. 5.2, StyleGAN2): Adam 2e-3, betas (0, 0.99), G regularised every 4
and D every 16 steps, R1 gamma 10, path length weight 2, G EMA half-life 10 kimg.
Batches: pretraining 32, fine-tuning 8 (Sec. 5.2); the shape-centre loss needs
several images per identity, so a batch is identities x images per identity.

The schedule of alternating descent is not given by the paper ("a few
iterations" of shape, then albedo): here 1000 shape steps, then 1000 albedo
steps, repeated, after the albedo pre-training.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "paper"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset_dir = ""  # empty: <workdir>/data, generated when missing
    c.data.identities_per_batch = 2
    c.data.images_per_identity = 4
    c.data.generate = ml_collections.ConfigDict(dict(
        source="teacher", checkpoint=None, identities=10000, edits=11, resolution=1024,
        teacher_albedo_size=1024, albedo_size=1024, crop_size=224, fit_size=512,
        fit_steps=300, rigid_steps=100, truncation=1.0, seed=0, batch=8))

    c.model = ml_collections.ConfigDict()
    c.model.flame = ""  # empty: the built-in procedural default; else FLAME's generic_model.pkl
    c.model.num_shape = 300
    c.model.num_expression = 50
    # E_shape: MICA's iresnet100 and shape MLP (hidden 300, 3 layers), `weights` =
    # MICA's mica.tar; the other codes from a linear head on the backbone.
    c.model.encoder = ml_collections.ConfigDict(dict(
        backbone="iresnet100", widths=(64, 128, 256, 512), input_size=112, weights="",
        shape_head="mica", mica_hidden=300, mica_layers=3))
    # modulation_init: a fresh G_Ab's w -> style weights start at this times
    # StyleGAN2's N(0, 1) (1: StyleGAN2's; `models.scale_modulation`).
    # residual_over_mean: a fresh G_Ab draws a residual over the training set's
    # mean A_GT, starting at 0 (`models.ResidualGenerator`; a small-scale aid).
    c.model.albedo = ml_collections.ConfigDict(dict(
        resolution=1024, channel_multiplier=2, channel_max=0, n_mlp=8, weights="",
        modulation_init=1.0, residual_over_mean=False))
    c.model.displacement = ml_collections.ConfigDict(dict(
        resolution=256, channel_multiplier=2, channel_max=0, n_mlp=8, max_displacement=0.01))
    # F (Eq. 1, Sec. 4.1): dlib's ResNet (shipped) or ArcFace ("arcface", weights = an
    # iresnet .pth), fed faces aligned as each was trained. world_head: a linear
    # head fitted on that many teacher identities (`face3d_train.identity`); 0:
    # none, as the paper's F sees StyleGAN2's real-looking people.
    c.model.identity = ml_collections.ConfigDict(dict(
        kind="dlib", chip_size=150, weights="",
        world_head=ml_collections.ConfigDict(dict(identities=0, views=4, dim=32, ridge=1e-3))))
    # The perceptual loss's VGG16 (Sec. 4.1, relu3_3): a torchvision VGG16 state
    # dict; empty: F's mid-level maps (no VGG16 weights ship).
    c.model.perceptual = ml_collections.ConfigDict(dict(weights=""))
    c.model.render_size = 224

    # The shape prior (`face3d_train.prior`): E_shape trained with 3D supervision
    # before alternating descent. The paper's prior is MICA's weights
    # (model.encoder.weights = mica.tar), so identities 0 skips the stage; the
    # other values are MICA's: Adam 1e-4 for the mapping and 1e-3 for ArcFace
    # (backbone_lr_scale 10), the face region weighted 150 against 1.
    c.prior = ml_collections.ConfigDict(dict(
        identities=0, views=2, steps=1000, batch=32, lr=1e-4, backbone_lr_scale=10.0,
        face_weight=150.0, chunk=128))

    c.schedule = ml_collections.ConfigDict(dict(
        total_steps=400_000, albedo_pretrain_steps=100_000, shape_steps=1000, albedo_steps=1000))

    c.optim = ml_collections.ConfigDict()
    # frozen_backbone_stages 3: MICA's ArcFace trains only its stage 4 and embedding.
    c.optim.shape = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999,
                                                   backbone_lr_scale=1.0,
                                                   frozen_backbone_stages=3))
    c.optim.gan = ml_collections.ConfigDict(dict(
        g_lr=2e-3, d_lr=2e-3, b1=0.0, b2=0.99, r1_gamma=10.0, g_reg_every=4, d_reg_every=16,
        pl_weight=2.0, pl_decay=0.01, pl_batch_shrink=2, ema_kimg=10.0, ema_rampup=0.0))

    c.losses = ml_collections.ConfigDict()
    # albedo_symmetric_reconstruction in pre-training: a small-scale aid (tiny),
    # not the paper's (0 here).
    c.losses.pretrain = ml_collections.ConfigDict(dict(gan=1.0, albedo_identity=1.0,
                                                       albedo_symmetric_reconstruction=0.0))
    # rigid_from_landmarks: head pose and camera get the landmark term's gradient
    # only, the image terms reach the other codes (a small-scale aid, tiny's;
    # `step.context`). False: every term moves them, as in DECA and the paper.
    c.losses.rigid_from_landmarks = False
    c.losses.shape = ml_collections.ConfigDict(dict(
        identity=0.5, perceptual=1.0, landmark=5.0, shape_center=1.0, regularization=1e-4))
    c.losses.albedo = ml_collections.ConfigDict(dict(
        symmetric_reconstruction=1.0, identity=1.0, perceptual=1.0, landmark=0.5,
        albedo_symmetric_reconstruction=0.1, albedo_identity=0.1, gan=1.0))

    c.checkpoint = ml_collections.ConfigDict(dict(every=5000, keep=3, async_save=True))
    c.log = ml_collections.ConfigDict(dict(every=100, images_every=5000))
    c.eval = ml_collections.ConfigDict(dict(every=5000, identities=64, seed=1234))
    # "switch": one compiled step, lax.switch on the step counter (the design
    # card); "phase": one executable per phase, chosen on the host (loop.py).
    c.selector = "switch"
    c.max_bad_steps = 20  # consecutive non-finite steps that stop the run
    return c
