"""The `face3d` command: help, the demo, asset commands, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from face3d_jax.cli import main
from face3d_jax.flame import load


def test_render_writes_pngs(tmp_path):
    from PIL import Image

    assert main(["render", "--yaw", "0", "-30", "--resolution", "32", "--out",
                 str(tmp_path)]) == 0
    images = [np.asarray(Image.open(tmp_path / name)) for name in ("yaw_+000.png", "yaw_-030.png")]
    assert all(im.shape == (32, 32, 3) and im.max() > 100 for im in images)
    assert not np.array_equal(images[0], images[1])


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["assets", "--help"],
                                  ["render", "--help"],
                                  ["assets", "make-default", "--help"],
                                  ["assets", "import-flame", "--help"],
                                  ["identity-head", "--help"], ["bench", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: face3d" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "face3d_jax.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "demo" in out.stdout and "assets" in out.stdout


def test_demo_writes_meshes_and_parameters(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    assert main(["demo", "--out", str(tmp_path), "--num", "2", "--seed", "3",
                 "--render-resolution", "32"]) == 0
    renders = sorted((tmp_path / "renders").glob("yaw_*.png"))
    assert len(renders) == 7
    params = np.load(tmp_path / "params.npz")
    assert params["shape"].shape == (2, 300) and params["expression"].shape == (2, 50)
    assert params["landmarks"].shape == (2, 68, 3)
    for i in range(2):
        mesh = trimesh.load(tmp_path / f"face_{i}.obj", process=False)
        glb = trimesh.load(tmp_path / f"face_{i}.glb", force="mesh", process=False)
        assert len(mesh.faces) == len(glb.faces) > 9000
        assert mesh.visual.uv is not None
    # Each face wears its own painted albedo, in the OBJ's PNG and in the GLB.
    from PIL import Image

    textures = [np.asarray(Image.open(tmp_path / f"face_{i}.png")) for i in range(2)]
    assert textures[0].shape == (512, 512, 3) and textures[0].std() > 10
    assert np.abs(textures[0].astype(float) - textures[1]).mean() > 5
    glb_texture = np.asarray(trimesh.load(tmp_path / "face_0.glb", force="mesh", process=False)
                             .visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(glb_texture, textures[0])
    # A different seed gives different faces; the same seed the same ones.
    assert main(["demo", "--out", str(tmp_path / "again"), "--num", "2", "--seed", "3",
                 "--render-resolution", "32"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "params.npz")["landmarks"],
                                  params["landmarks"])


def test_make_default_then_import_round_trips(tmp_path, default_flame):
    files = tmp_path / "files"
    assert main(["assets", "make-default", "--out", str(files)]) == 0
    for name in ("generic_model.pkl", "flame_static_embedding.pkl",
                 "flame_dynamic_embedding.npy", "head_template.obj"):
        assert (files / name).is_file(), name
    assert main(["assets", "import-flame", str(files), "--out", str(tmp_path / "npz")]) == 0
    manifest = json.loads((tmp_path / "npz" / "manifest.json").read_text())
    assert manifest["counts"]["vertices"] == default_flame.num_vertices
    for model in (load(files), load(tmp_path / "npz" / "flame_model.npz")):
        for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "weights", "uv_coords"):
            np.testing.assert_allclose(getattr(model, name), getattr(default_flame, name),
                                       atol=1e-7, err_msg=name)
        for name in ("faces", "uv_faces", "dynamic_lmk_faces_idx"):
            np.testing.assert_array_equal(getattr(model, name), getattr(default_flame, name))


def test_bad_input_ends_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "generic_model.pkl"
    assert main(["assets", "import-flame", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err
    corrupt = tmp_path / "broken.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.npz" in err


def test_identity_head_command(tmp_path, capsys):
    """`face3d identity-head`: nothing to fit when the config asks for none;
    a head fitted with other settings is refused in one line."""
    assert main(["identity-head", "--workdir", str(tmp_path), "--set",
                 "model.identity.world_head.identities=0"]) == 0
    assert "asks for no identity head" in capsys.readouterr().out
    from face3d_jax.nets.identity import IdentityHead
    from face3d_jax.teacher.identity_head import save_identity_head

    save_identity_head(tmp_path / "identity_head.npz", IdentityHead(np.zeros(128),
                                                                    np.eye(128)[:, :32]),
                       {"identities": 3})
    assert main(["identity-head", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "identity_head.npz: fitted with " in err[0]
