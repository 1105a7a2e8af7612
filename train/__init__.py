"""face3d_train: the trainer (configs, train state, the jitted phase selector,
checkpoints, logging). Installed as `face3d_train`; it imports face3d_jax,
never the other way round.

So far: `gan` (StyleGAN2's G/D phases with lazy regularisation and G EMA, as
pure functions of one state pytree). The alternating-descent trainer of
Sec. 4 is the trainer issue.
"""
