"""Random but plausible FLAME parameters, for demos and renders."""

from __future__ import annotations

import jax
import numpy as np


def sample_parameters(key: jax.Array, batch: int, num_shape: int = 300,
                      num_expression: int = 50) -> dict[str, np.ndarray]:
    """Random but plausible FLAME parameters (the paper's 300 shape and 50
    expression components), all float32:

    shape (B, 300) ~ N(0, 1); expression (B, 50) ~ N(0, 0.3^2) (mild, as in
    most photographs); global_pose (B, 3) with yaw in +-0.4 rad; neck_pose
    (B, 3) small; jaw_pose (B, 3) an opening in [0, 0.1] rad about x (lips
    nearly closed); eye_pose (B, 6) a gaze of a few degrees (wider turns
    show the eyeball's white above the lid of a head that does not turn).
    """
    ks = jax.random.split(key, 6)
    shape = jax.random.normal(ks[0], (batch, num_shape))
    expression = 0.3 * jax.random.normal(ks[1], (batch, num_expression))
    yaw = jax.random.uniform(ks[2], (batch,), minval=-0.4, maxval=0.4)
    global_pose = jax.numpy.stack([0.0 * yaw, yaw, 0.0 * yaw], axis=1)
    neck_pose = 0.05 * jax.random.normal(ks[3], (batch, 3))
    jaw_open = jax.random.uniform(ks[4], (batch,), minval=0.0, maxval=0.1)
    jaw_pose = jax.numpy.stack([jaw_open, 0.0 * jaw_open, 0.0 * jaw_open], axis=1)
    eye_pose = 0.03 * jax.random.normal(ks[5], (batch, 6))
    params = dict(shape=shape, expression=expression, global_pose=global_pose,
                  neck_pose=neck_pose, jaw_pose=jaw_pose, eye_pose=eye_pose)
    return {k: np.asarray(v, np.float32) for k, v in params.items()}
