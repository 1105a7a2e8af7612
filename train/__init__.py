"""face3d_train: the trainer (configs, train state, the jitted phase selector,
checkpoints, logging, evaluation in the teacher world). Installed as
`face3d_train`; it imports face3d_jax, never the other way round.

`loop.train` is `face3d train`: AlbedoGAN pre-training (Sec. 3.3), then
alternating descent of shape and albedo (Sec. 4), one jitted `step` per phase
over the state of `state.py`, with the loss terms of `terms.py` weighed by a
config of `configs/`.
"""
