"""The restricted reader on TorchScript archives (formats.torch_file:
`torchscript_state_dict`) against torch.jit.load(...).state_dict() on archives
written here by torch.jit.trace and torch.jit.script; and what it refuses
(classes outside the allow-list, damaged files, cyclic module trees) and never
touches (the archive's code/).

OpenAI's CLIP archives themselves: tests/test_clip.py.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from face3d_jax.formats.torch_file import (
    ScriptObjectStub,
    is_torchscript_archive,
    load_torch_file,
    materialize,
    torchscript_state_dict,
)
from face3d_jax.formats.unpickler import UnsafePickleError


class _Block(nn.Module):
    """A submodule with a parameter, persistent and non-persistent buffers, a plain
    (unregistered) tensor attribute and plain numbers and lists."""

    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2)
        self.proj = nn.Linear(width, width, bias=False)  # bias: a None parameter
        self.ln = nn.LayerNorm(width)
        self.register_buffer("attn_mask", torch.full((3, 3), float("-inf")).triu_(1))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.plain = torch.full((width,), 0.5)  # not a buffer: not in state_dict
        self.scale = 2
        self.sizes: list[int] = [1, 2, 3]
        self.weights: list[float] = [0.5]

    def forward(self, x):
        y = self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]
        y = self.ln(self.proj(y) + self.plain * self.scale) + self.scratch.sum()
        return y * self.sizes[0] + self.weights[0]


class _Net(nn.Module):
    """Parameters of three dtypes, a registered buffer shared with a submodule,
    BatchNorm's int64 counter, containers (Sequential, ModuleList)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(3, width).half())
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.register_buffer("extra", torch.randn(2).to(torch.bfloat16))
        self.conv = nn.Conv2d(3, width, 2, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(_Block(width), _Block(width))
        self.heads = nn.ModuleList([nn.Linear(width, 4), nn.Linear(width, 4)])
        self.register_buffer("shared_mask", self.blocks[0].attn_mask)
        self.emb = nn.Embedding(10, width)

    def forward(self, image, tokens):
        x = self.bn(self.conv(image)).flatten(2).mean(-1)  # (B, width)
        seq = self.emb(tokens).transpose(0, 1) + self.positional_embedding.float()[:, None]
        bias = self.class_embedding + self.shared_mask.sum(-1).clamp(min=0)[:, None, None]
        seq = self.blocks(seq + bias)
        y = seq.mean(0) + x + self.extra.float().sum()
        return self.heads[0](y) + self.heads[1](y)


def _inputs():
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2, 3))


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{kind: path} of _Net saved by torch.jit.trace and torch.jit.script."""
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases and LayerNorms away from 0 and 1
        net.bn.running_mean.normal_()
        net.bn.num_batches_tracked.fill_(7)
    folder = tmp_path_factory.mktemp("torchscript")
    paths = {}
    for kind in ("trace", "script"):
        paths[kind] = folder / f"net_{kind}.pt"
        module = torch.jit.trace(net, _inputs()) if kind == "trace" else torch.jit.script(net)
        torch.jit.save(module, paths[kind])
    return paths


def _assert_same_as_torch(path: Path):
    ours = torchscript_state_dict(path)
    want = torch.jit.load(path).state_dict()
    assert list(ours) == list(want)  # the keys, in torch's order
    for key, tensor in want.items():
        got = ours[key].numpy()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the bits
            assert str(got.dtype) == "bfloat16", key
            got, expected = got.view(np.uint16), tensor.view(torch.int16).numpy().view(np.uint16)
        else:
            expected = tensor.numpy()
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert got.tobytes() == expected.tobytes(), key  # bit for bit
    return ours, want


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_state_dict_matches_torch_jit_load(archives, kind):
    ours, _ = _assert_same_as_torch(archives[kind])
    # registered buffers (persistent or not), BatchNorm's counter, a shared buffer under
    # both names; the plain tensor attribute and the None bias are not entries
    for key in ("blocks.0.attn_mask", "blocks.1.scratch", "bn.num_batches_tracked",
                "shared_mask", "positional_embedding", "extra"):
        assert key in ours, key
    assert not any(k.endswith(".plain") for k in ours)
    assert "blocks.0.proj.weight" in ours and "blocks.0.proj.bias" not in ours
    assert ours["positional_embedding"].numpy().dtype == np.float16
    assert ours["bn.num_batches_tracked"].numpy() == 7
    assert is_torchscript_archive(archives[kind])
    root = load_torch_file(archives[kind])
    assert isinstance(root, ScriptObjectStub) and root.qualname.startswith("__torch__.")
    assert root.state["training"] is False


def test_torch_save_file_is_not_torchscript(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(_Net().state_dict(), path)
    assert not is_torchscript_archive(path)
    assert not is_torchscript_archive(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="not a TorchScript module archive") as info:
        torchscript_state_dict(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _rewrite(source: Path, target: Path, replace: dict[str, bytes], keep=lambda name: True):
    """A copy of the zip `source` with some members' bytes replaced or added."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for name in src.namelist():
            if keep(name) and name[len(prefix) + 1:] not in replace:
                dst.writestr(name, src.read(name))
        for name, data in replace.items():
            dst.writestr(f"{prefix}/{name}", data)
    return target


def _one_line(info, path):
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_refuses_classes_outside_the_allow_list(archives, tmp_path):
    # protocol 2: a __torch__ module whose attribute is built by calling os.system
    evil = (b"\x80\x02c__torch__\nNet\n)\x81}(X\x08\x00\x00\x00training\x89"
            b"X\x01\x00\x00\x00xcos\nsystem\nX\x04\x00\x00\x00echo\x85Rub.")
    path = _rewrite(archives["trace"], tmp_path / "evil.pt", {"data.pkl": evil})
    with pytest.raises(UnsafePickleError) as info:
        torchscript_state_dict(path)
    assert "'os.system'" in _one_line(info, path)
    # builtins beyond the containers, and torch names other than tensors and typed lists
    for module, name in (("builtins", "eval"), ("torch.jit._pickle", "build_tensor_from_id"),
                         ("torch", "load")):
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
        path = _rewrite(archives["trace"], tmp_path / f"{name}.pt", {"data.pkl": data})
        with pytest.raises(UnsafePickleError) as info:
            torchscript_state_dict(path)
        assert f"'{module}.{name}'" in _one_line(info, path)
    # __torch__ classes are stand-ins in TorchScript archives only, not in torch.save files
    path = tmp_path / "not_script.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("not_script/data.pkl", b"\x80\x02c__torch__\nNet\n)\x81}b.")
    with pytest.raises(UnsafePickleError) as info:
        load_torch_file(path)
    assert "'__torch__.Net'" in _one_line(info, path)


def test_damaged_archives_give_one_line_errors(archives, tmp_path):
    data = archives["trace"].read_bytes()
    for fraction in (0.5, 0.95):
        path = tmp_path / f"cut_{fraction}.pt"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ValueError) as info:
            torchscript_state_dict(path)
        assert "truncated" in _one_line(info, path)
    # a storage whose bytes are damaged: found when that tensor is read
    with zipfile.ZipFile(archives["trace"]) as src:
        header = src.getinfo(next(n for n in src.namelist() if n.endswith("/data/0"))).header_offset
    damaged = bytearray(data)  # torch stores members uncompressed, after a local header
    name_len, extra_len = np.frombuffer(data[header + 26:header + 30], "<u2")
    damaged[header + 30 + int(name_len) + int(extra_len)] ^= 0xFF
    path = tmp_path / "crc.pt"
    path.write_bytes(bytes(damaged))
    state = torchscript_state_dict(path)
    with pytest.raises(ValueError) as info:
        materialize(state)
    assert "storage" in _one_line(info, path)
    # a module that is its own submodule
    cycle = (b"\x80\x02c__torch__\nNet\n)\x81q\x00}(X\x08\x00\x00\x00training\x89"
             b"X\x04\x00\x00\x00selfh\x00ub.")
    path = _rewrite(archives["trace"], tmp_path / "cycle.pt", {"data.pkl": cycle})
    with pytest.raises(ValueError, match="cycle") as info:
        torchscript_state_dict(path)
    _one_line(info, path)
    # no data.pkl at all
    path = _rewrite(archives["trace"], tmp_path / "nodata.pt", {},
                    keep=lambda name: not name.endswith("data.pkl"))
    with pytest.raises(ValueError, match="data.pkl") as info:
        torchscript_state_dict(path)
    _one_line(info, path)


def test_code_is_never_read_or_run(archives, tmp_path, monkeypatch):
    """Every code/ file and constants.pkl replaced by Python that would write a
    marker file and exit: reading the weights must neither open those members
    nor compile, import or run anything from them."""
    marker = tmp_path / "ran.txt"
    payload = (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
               "raise SystemExit('archive code ran')\n").encode()
    evil_pickle = b"\x80\x02cos\nsystem\n(S'touch x'\ntR."
    with zipfile.ZipFile(archives["script"]) as src:
        names = src.namelist()
    prefix = names[0].split("/")[0] + "/"
    replace = {n[len(prefix):]: payload for n in names if n.startswith(f"{prefix}code/")}
    replace["code/__torch__/extra.py"] = payload
    replace["constants.pkl"] = evil_pickle
    path = _rewrite(archives["script"], tmp_path / "poisoned.pt", replace)

    opened = []
    original_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name if isinstance(name, str) else name.filename)
        return original_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    compiled = []
    watching = [True]

    def audit(event, args):
        # compile(): args[0] is the source; exec of a module: an import
        if watching[0] and event in ("compile", "exec", "import"):
            compiled.append((event, repr(args)[:5000]))

    sys.addaudithook(audit)  # cannot be removed; `watching` switches it off
    modules_before = set(sys.modules)
    try:
        state = torchscript_state_dict(path)
        arrays = materialize(state)
    finally:
        watching[0] = False
    assert not marker.exists()
    assert not any(m.startswith("__torch__") for m in set(sys.modules) - modules_before)
    assert not [c for c in compiled if any(w in c[1] for w in ("ran.txt", "code ran", "__torch__"))]
    assert any(n.endswith("/data.pkl") for n in opened)  # the recorder works
    touched = [n for n in opened if "/code/" in n or n.endswith("constants.pkl")]
    assert not touched, touched
    assert all(n.endswith(("/data.pkl", "/byteorder")) or "/data/" in n for n in opened), opened
    want = torch.jit.load(archives["script"]).state_dict()  # the unpoisoned original
    assert list(arrays) == list(want)
    for key, tensor in want.items():
        if tensor.dtype != torch.bfloat16:
            np.testing.assert_array_equal(arrays[key], tensor.numpy())
