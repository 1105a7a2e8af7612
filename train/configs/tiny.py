"""The paper's config shrunk for a 2-core CPU: `face3d train --config tiny` in
the teacher world in under 20 minutes, learning measurably.

Everything not overridden here is `paper.py`'s, including every loss weight.
What changes: sizes (128^2 images, 64^2 crops and albedo, 32^2 displacement,
StyleGAN2 channels capped at 32, 2 mapping layers), a tiny dataset made on the
fly, E_shape on the shipped dlib face network (pretrained, offline; frozen in
alternating descent) instead of ArcFace's iresnet100, a shape prior trained
on teacher identities in MICA's place, F given a head fitted on teacher
identities (an aid the paper does not need: its F sees real faces) and a
short schedule.
"""

from __future__ import annotations

from face3d_train.configs import paper


def get_config():
    c = paper.get_config()
    c.name = "tiny"
    # 64 identities seen 4 ways: G_Ab learns w -> albedo from the training
    # identities alone, and a ridge read-out of the *true* albedo from w
    # fitted on 32 identities scores below their mean albedo on held-out
    # ones (-0.1 dB), on 64 +1.0 dB, on 128 +1.9 dB (`face3d_eval.albedo_probe`).
    c.data.generate.update(dict(
        identities=64, edits=4, resolution=128, teacher_albedo_size=64, albedo_size=64,
        crop_size=64, fit_size=128, fit_steps=150, rigid_steps=50, batch=16))
    # dlib has no ArcFace embedding for MICA's mapping: the linear head gives the shape.
    c.model.encoder.update(dict(backbone="dlib", input_size=96, shape_head="linear"))
    c.model.albedo.update(dict(resolution=64, channel_max=32, n_mlp=2))
    # G_Ab from 32 identities: two small-scale aids the paper does not need
    # (its 10,000 identities span w's space). Its w -> style weights start at
    # 0 (`models.scale_modulation`): tiny's former 192 training w (32
    # identities) spanned 36 of 512 dimensions and 77% of a held-out w's
    # deviation from their mean lay off that span, where random initial weights are never trained away: G_Ab
    # drew held-out identities in the coloured blobs of its initialisation.
    # And pre-training adds a reconstruction term against A_GT, the pairing of
    # w and A_GT the identity loss alone conveys weakly. eval/albedo_psnr after
    # the 100 pre-training steps, at 32 identities: 12.0 dB before, 17.0 dB
    # with both (the training set's mean A_GT: 19.0 dB; docs/training.md).
    c.model.albedo.modulation_init = 0.0
    c.losses.pretrain.albedo_symmetric_reconstruction = 10.0
    # A third: G_Ab draws a residual over the training set's mean A_GT,
    # starting at 0 (`models.ResidualGenerator`). After the 100 pre-training
    # steps, held out: 18.9 dB with it, 16.9 without (the mean A_GT: 19.2).
    c.model.albedo.residual_over_mean = True
    c.model.displacement.update(dict(resolution=32, channel_max=32, n_mlp=2))
    # F on the teacher world's faces: dlib's network on its own 150^2 chip (at
    # 96^2 it told the held-out identities apart less often, 88% rank-1 against
    # 97%, for about the same time per step) with a head fitted on 256 teacher
    # identities (`face3d_train.identity`: its embeddings of synthetic faces lie
    # close together).
    c.model.identity.world_head.identities = 256
    c.model.render_size = 64
    # The shape prior in MICA's place (no MICA weights exist for a dlib
    # backbone; `face3d_train.prior`): 1024 teacher identities seen 2 ways,
    # the linear head solved in closed form, then 150 Adam steps of MICA's
    # vertex loss with the backbone at 1e-5. Measured on 64 held-out
    # identities: 71% of the mean face's NoW-region error (ridge head alone
    # 75%; 300 Adam steps from the zero head, backbone 1e-4, 85%; frozen
    # backbone, 300 steps, 92%); measured before the shape rows read unit-norm
    # input (`models.ShapeEncoder`). Since: 66% on the evaluation's 32
    # identities (2.97 mm, mean face 4.47). About 5 min on 2 cores.
    c.prior.update(dict(identities=1024, views=2, steps=150, batch=32, lr=1e-4,
                        backbone_lr_scale=0.1))
    c.schedule.update(dict(total_steps=500, albedo_pretrain_steps=100, shape_steps=50,
                           albedo_steps=25))
    # Alternating descent keeps the paper's 1e-4 for E_shape's heads and
    # G_Disp (the shape prior starts them where the paper's MICA does) and
    # freezes dlib's backbone, as the paper config freezes most of MICA's
    # ArcFace. dlib's network folds its batch norms into tiny kernels (median
    # |w| 5e-3) before large gains (~10), so Adam's uniform per-weight steps
    # are large relative changes: at 1e-4 its pooled features died (exactly 0
    # for every image) within 20 shape steps of a run from the mean face, and
    # even at 1e-5 25 shape steps took the prior's NoW-region error from 3.07
    # to 7.1 mm, while with the backbone frozen it stayed at 3.06 mm.
    c.optim.shape.backbone_lr_scale = 0.0
    c.optim.shape.frozen_backbone_stages = 0  # dlib's network: no iresnet stages
    # Head pose and camera from the landmark term alone (`step.context`): the
    # image terms, on F's maps in place of the paper's VGG-Face, shrank the
    # render (camera scale 0.43 of the crop's after 500 steps, landmarks from
    # 4.8 to 9.3 px): rendered even with A_GT, the perceptual term is lowest
    # at 0.55 of the prior's scale, the landmark term at 0.9. From the prior
    # and the pre-trained G_Ab, 50 shape steps: scale 0.63 and 9.5 px before,
    # 0.85 and 4.5 px with this.
    c.losses.rigid_from_landmarks = True
    c.optim.gan.update(dict(ema_kimg=0.5, ema_rampup=0.05))
    c.checkpoint.update(dict(every=100, keep=2))
    c.log.update(dict(every=10, images_every=200))
    c.eval.update(dict(every=100, identities=32))
    # XLA:CPU ran the lax.switch step about 3x slower than the same phases
    # compiled alone (loop.py's docstring): one executable per phase here.
    c.selector = "phase"
    return c
