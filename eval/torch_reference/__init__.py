"""PyTorch twins of our networks, written here with the state-dict layouts of
the public PyTorch code (rosinality's StyleGAN2, insightface's iresnet): the
reference for converter tests and the PyTorch side of the benchmarks. Imports
torch: install the `torch` extra."""
