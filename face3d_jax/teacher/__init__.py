"""The synthetic teacher world: a stand-in for the pretrained StyleGAN2 whose
every image has a known 3D truth (docs/architecture.md, "The procedural
default and the teacher world").

    from face3d_jax import teacher
    world = teacher.make_teacher(jax.random.key(0), flame.default_model(), teacher.TeacherConfig())
    w, scene, sample = teacher.sample(world, jax.random.key(1), batch=4)
    held = teacher.make_held_out(world, jax.random.key(7), count=64, crop_size=224)

Modules: params (the world's fixed random parameters), world (z -> w -> scene
-> image, labels and attribute directions), scene (what a scene and a
rendered sample hold; light and background), albedo (the procedural UV
albedo and wrinkle maps), held_out (held-out samples with their truth, for
evaluation), commands (`face3d teacher`).
"""

from face3d_jax.teacher.held_out import (HeldOut, crop_landmarks, held_out_from_w, identity_views,
                                         make_held_out)
from face3d_jax.teacher.params import SUBSPACES, Teacher, TeacherConfig, make_teacher
from face3d_jax.teacher.scene import TeacherSample, TeacherScene
from face3d_jax.teacher.world import (LABELS, attribute_direction, labels, mapping, render_scene,
                                      sample, scene)

__all__ = ["LABELS", "SUBSPACES", "HeldOut", "Teacher", "TeacherConfig", "TeacherSample",
           "TeacherScene", "attribute_direction", "crop_landmarks", "held_out_from_w",
           "identity_views", "labels", "make_held_out", "make_teacher", "mapping",
           "render_scene", "sample", "scene"]
