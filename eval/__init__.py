"""Evaluation scripts and benchmarks of face3d-jax (installed as `face3d_eval`)."""
