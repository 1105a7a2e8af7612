"""face3d_train: the trainer (configs, train state, the jitted phase selector,
checkpoints, logging). Installed as `face3d_train`; it imports face3d_jax,
never the other way round. Nothing is implemented here yet (the trainer issue).
"""
