"""The face renderer: cameras, shading (spherical harmonics, Phong) and, built
on face3d_kernels' primitives, `render` of a FLAME mesh with a UV albedo."""
