"""The names and sizes of FLAME's own files (FLAME 2020/2023 and DECA's
assets), shared by the reader (io.py) and the writer (writer.py)."""

STATIC_NAME = "flame_static_embedding.pkl"
DYNAMIC_NAME = "flame_dynamic_embedding.npy"
DECA_NAME = "landmark_embedding.npy"
UV_NAMES = ("head_template.obj", "FLAME_texture.npz")
NUM_SHAPE, NUM_EXPRESSION = 300, 100  # FLAME's 400 shapedirs components
ROOT_PARENT = 0xFFFFFFFF  # uint32(-1): FLAME's kintree_table "no parent"
