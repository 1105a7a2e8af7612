"""`tiny` run longer: more identities and a schedule about 6x tiny's, for a
2-core CPU in under 2 hours (not run in CI).

    face3d train --config small --workdir runs/small

Everything not set here is `tiny.py`'s (so `paper.py`'s loss weights): the
same sizes (128^2 images, 64^2 crops and albedo), the same shape prior, 2x the
training identities (128 seen 6 ways) and 3000 steps: 600 of AlbedoGAN
pre-training, then alternating 50 shape and 25 albedo steps.
"""

from __future__ import annotations

from face3d_train.configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "small"
    c.data.generate.update(dict(identities=128, edits=6))
    c.schedule.update(dict(total_steps=3000, albedo_pretrain_steps=600))
    c.checkpoint.update(dict(every=500, keep=2))
    c.log.update(dict(every=20, images_every=1000))
    c.eval.update(dict(every=250, identities=32))
    return c
