"""Peers that cannot share our process: scripts that `face3d_eval` benchmarks
run in another interpreter (jaxrenderer_peer.py: jax < 0.5). Never imported
here; a package only so that an installed copy carries them."""
