"""F's teacher-world head of a run: fitted once into <workdir>/identity_head.npz
and reused (`face3d_jax.teacher.identity_head`).

    head = ensure_identity_head(config, "runs/tiny")     # None when the config has none

`config.model.identity.world_head.identities` > 0 asks for it (tiny: the
teacher world's faces all look alike to dlib's network until then); 0 (the
paper config, whose F sees StyleGAN2's images of real-looking people) runs
F without a head. The file records the settings it was fitted with; a run
whose config asks for other settings stops with one line naming the file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from face3d_jax.teacher.identity_head import (HEAD_FILE, fit_identity_head, head_key,
                                              load_identity_head, save_identity_head)
from face3d_train.data import generate_config
from face3d_train.models import identity_network

log = logging.getLogger(__name__)


def head_settings(config) -> dict | None:
    """What the head of `config` depends on (None: the config wants none)."""
    head = config.model.identity.get("world_head")
    if head is None or int(head.identities) == 0:
        return None
    gen = generate_config(config)
    if gen.source != "teacher":
        raise ValueError("model.identity.world_head is fitted in the teacher world; "
                         f"data.generate.source is {gen.source!r} (set world_head.identities=0)")
    ident = config.model.identity
    return dict(kind=str(ident.kind), weights=str(ident.weights), chip_size=int(ident.chip_size),
                flame=str(config.model.get("flame") or ""), teacher_seed=int(gen.teacher_seed),
                resolution=int(gen.resolution), teacher_albedo_size=int(gen.teacher_albedo_size),
                teacher_calibration=int(gen.teacher_calibration),
                crop_size=int(gen.crop_size), identities=int(head.identities),
                views=int(head.views), dim=int(head.dim), ridge=float(head.ridge),
                seed=int(config.seed))


def ensure_identity_head(config, workdir, *, model=None, progress: bool = True):
    """The head of a run: read from <workdir>/identity_head.npz, or fitted
    there when missing. Returns an `IdentityHead`, or None when the config
    asks for none."""
    settings = head_settings(config)
    if settings is None:
        return None
    path = Path(workdir) / HEAD_FILE
    if path.exists():
        return load_identity_head(path, settings)
    from face3d_jax.data.dataset_sources import TeacherSource

    if model is None:
        from face3d_train.loop import load_model

        model = load_model(config)
    world = TeacherSource(generate_config(config), model).world
    start = time.perf_counter()

    def report(done, total):
        if progress:
            log.info("identity head: %d of %d identities embedded (%.0f s)", done, total,
                     time.perf_counter() - start)

    head = fit_identity_head(world, identity_network(config.model), head_key(settings["seed"]),
                             identities=settings["identities"], views=settings["views"],
                             crop_size=settings["crop_size"], dim=settings["dim"],
                             ridge=settings["ridge"], progress=report)
    save_identity_head(path, head, settings)
    log.info("fitted F's teacher-world head in %.0f s: %s", time.perf_counter() - start, path)
    return head
