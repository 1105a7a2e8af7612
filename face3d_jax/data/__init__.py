"""The training dataset of Sec. 5.1: identities drawn from an image source
(the teacher world or a converted StyleGAN2), edited InterFaceGAN-style into
several images each, cropped, landmarked, with a pseudo-ground-truth albedo;
written as TFDS ArrayRecord and read back in identity-grouped batches.

Modules: dataset (generation, resumable), dataset_sources (the image
sources), boundaries (InterFaceGAN's attribute boundaries), tfds_builder (the
on-disk format), loader (the grain loader).
"""
