"""face3d-jax: generative 3D faces (FLAME shape, AlbedoGAN albedo) in JAX/Flax.

Packages, by job (docs/architecture.md draws the dependencies):
  flame     the face model: decoder, FLAME's files, the procedural default
  nets      the networks: StyleGAN2, ArcFace, dlib's ResNet, VGG16, MICA's head
  render    cameras, shading, the renderer over the kernels' primitives
  teacher   the synthetic teacher world and its held-out samples
  data      the training dataset (generation, TFDS format, loader)
  faces     faces in images: detection, landmarks, DECA's crop, aligned chips
  formats   reading pickles and torch files without running their code
  convert   weight converters from PyTorch checkpoints
Modules: losses, gan_losses (the paper's losses), metrics, texture (Sec.
3.1-3.2), fitting, export, extract_albedo, demo, cli (the `face3d` command).
"""

__version__ = "0.1.0"
