"""Flax NNX networks of the pipeline: StyleGAN2 (mapping, synthesis,
discriminator), the ArcFace iresnet, VGG16 up to relu3_3 and dlib's
face-recognition ResNet. All NHWC."""
