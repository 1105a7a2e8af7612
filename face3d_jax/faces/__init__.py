"""Faces in images: detection and 68 landmarks (dlib), DECA's crop for
E_shape, and the aligned chips face networks expect.

Modules: detect (dlib's detector, landmark predictor and its own chip), crop
(DECA's square crop as a similarity matrix, and its differentiable warp),
align (dlib's and ArcFace's aligned chips, differentiable, batched), commands
(`face3d landmarks`, `face3d embed`).
"""
