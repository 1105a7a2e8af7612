"""Flax NNX networks of the pipeline: StyleGAN2 (mapping, synthesis,
discriminator), the ArcFace iresnet, VGG16 up to relu3_3, dlib's
face-recognition ResNet and CLIP's ViTs (text editing, Sec. 5.5). All NHWC."""
