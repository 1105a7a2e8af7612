"""Weight converters from PyTorch (and dlib) checkpoints into our parameters.
Torch files load with `torch.load(weights_only=True)` or a restricted reader:
no code from a weights file ever runs."""
