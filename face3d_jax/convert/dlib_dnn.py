"""A reader for dlib's serialised deep networks (`dlib::serialize(net)` files), no dlib needed.

dlib writes a network as a nest of templates, outermost first (dlib/dnn/core.h):
  add_loss_layer : int version 1, loss details, subnetwork
  add_layer      : int version (1|2), subnetwork, layer details, bool setup_called,
                   bool gradient_input_is_stale, bool output_and_gradient_disabled,
                   tensor x_grad, tensor cached_output, [tensor params_grad if version 2]
  add_layer over the input layer: int version (2|3), input details, layer details,
                   3 bools, tensor x_grad, tensor cached_output, tensor grad_final,
                   [int sample_expansion_factor if version 3]
  add_tag_layer / add_skip_layer : int version 1, subnetwork
so a layer's details come after everything below it. The tag/skip wrappers carry
neither a type name nor their tag number, and add_layer's version can equal
theirs: the file cannot be walked without knowing the network's template. The
caller therefore passes `wrappers`, the kinds of the nest outermost first
("layer", "tag" or "skip"; the input layer closes the nest by itself).

Primitives (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h):
  integer : a control byte (low 4 bits: byte count; 0x80: negative) and that many
            little-endian magnitude bytes;
  float   : float_details, an int64 mantissa and an int16 exponent (value =
            mantissa * 2**exponent; exponents 32000/32001/32002 are inf/-inf/nan);
  bool    : one ASCII byte '1' or '0';
  string  : an unsigned length, then the bytes;
  tensor  : int version 2, int64 num_samples, k, nr, nc, then float32 little endian;
  alias_tensor : int version 1, int64 num_samples, k, nr, nc (a view, no data).
The layer details understood here are those of dlib's face-recognition ResNet and
its relatives: con_4..6, relu_/relu_2, affine_/affine_2, add_prev_, max_pool_2,
avg_pool_2, fc_2/fc_3, input_rgb_image(_sized), loss_metric_(2). Anything else
raises a ValueError naming the layer, never a guess.
"""

from __future__ import annotations

import bz2
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

WRAPPER_KINDS = ("layer", "tag", "skip")
_FLOAT_SPECIAL = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


class DlibFormatError(ValueError):
    """The bytes do not follow dlib's serialisation format at the given offset."""


@dataclasses.dataclass(frozen=True)
class DlibLayer:
    """One entry of a dlib network in execution order (input side first).

    kind: "input", "con", "relu", "affine", "add_prev", "max_pool", "avg_pool",
      "fc", "tag" or "skip".
    params: numpy float32 arrays by name, in dlib's layouts:
      con: filters (num_filters, k, nr, nc) and biases (num_filters,);
      affine: gamma (k,), beta (k,); fc: weights (num_inputs, num_outputs),
      biases (num_outputs,) when the layer has them.
    config: the layer's hyper-parameters (strides, paddings, window sizes,
      input channel means, ...).
    """

    kind: str
    params: dict[str, np.ndarray]
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DlibNet:
    """A parsed network: its loss layer's settings and its layers, input first."""

    loss: dict[str, Any]
    layers: list[DlibLayer]


class _Reader:
    """Cursor over the file's bytes; every read checks the bytes are there."""

    def __init__(self, data: bytes, origin: str):
        self.data, self.pos, self.origin = data, 0, origin

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.origin}: {what} at byte {self.pos} of "
                               f"{len(self.data)}; not a dlib network file, or truncated")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends inside {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "an integer") -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x} reading {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def float(self, what: str = "a float") -> float:
        mantissa, exponent = self.int(what), self.int(what)
        if exponent in _FLOAT_SPECIAL:
            return float(_FLOAT_SPECIAL[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def bool(self, what: str = "a bool") -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"expected '0' or '1' for {what}, found {ch!r}")
        return ch == b"1"

    def str(self, what: str = "a string") -> str:
        n = self.int(what)
        if n < 0 or n > 256:
            raise self.fail(f"implausible string length {n} reading {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII bytes reading {what}") from None

    def version(self, wanted: Sequence[int], what: str) -> int:
        v = self.int(f"the version of {what}")
        if v not in wanted:
            raise self.fail(f"{what} has version {v}, expected one of {tuple(wanted)}")
        return v

    def dims(self, what: str) -> tuple[int, int, int, int]:
        dims = tuple(self.int(f"the shape of {what}") for _ in range(4))
        if any(d < 0 for d in dims) or np.prod(dims, dtype=np.float64) > 2 ** 31:
            raise self.fail(f"implausible shape {dims} for {what}")
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        self.version((2,), what)
        dims = self.dims(what)
        count = int(np.prod(dims))
        raw = self.take(4 * count, f"the data of {what} {dims}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.version((1,), what)
        return self.dims(what)


# ------------------------------------------------------------------ layer details


def _con(r: _Reader, version: str) -> DlibLayer:
    if version not in ("con_4", "con_5", "con_6"):
        raise r.fail(f"unsupported convolution version {version!r}")
    params = r.tensor("con_ params").reshape(-1)
    num_filters, nr, nc = r.int(), r.int(), r.int()
    stride, padding = (r.int(), r.int()), (r.int(), r.int())
    fdims, bdims = r.alias("con_ filters"), r.alias("con_ biases")
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
        r.bool()  # use_relu: a fused-relu hint for cuDNN, no change to the maths
    nf = int(np.prod(fdims))
    if fdims[0] != num_filters or fdims[2:] != (nr, nc):
        raise r.fail(f"con_ filters {fdims} disagree with {num_filters} filters of {nr}x{nc}")
    nb = int(np.prod(bdims)) if use_bias else 0
    if params.size < nf + nb:
        raise r.fail(f"con_ params hold {params.size} values, filters and biases need {nf + nb}")
    layer_params = {"filters": params[:nf].reshape(fdims)}
    if nb:
        layer_params["biases"] = params[nf:nf + nb].copy()
    return DlibLayer("con", layer_params, {"num_filters": num_filters, "kernel": (nr, nc),
                                           "stride": stride, "padding": padding})


def _affine(r: _Reader, version: str) -> DlibLayer:
    if version not in ("affine_", "affine_2"):
        raise r.fail(f"unsupported affine version {version!r} (batch-norm layers are "
                     "not supported: save the network with affine layers)")
    params = r.tensor("affine_ params").reshape(-1)
    gdims, bdims = r.alias("affine_ gamma"), r.alias("affine_ beta")
    mode = r.int("the affine mode")
    disabled = r.bool() if version == "affine_2" else False
    ng, nb = int(np.prod(gdims)), int(np.prod(bdims))
    if params.size != ng + nb:
        raise r.fail(f"affine_ params hold {params.size} values, gamma+beta need {ng + nb}")
    # gamma first, beta right after it: affine_::forward_inplace uses beta(params, gamma.size()).
    return DlibLayer("affine", {"gamma": params[:ng].copy(), "beta": params[ng:].copy()},
                     {"mode": "conv" if mode == 1 else "fc", "disabled": disabled})


def _pool(r: _Reader, version: str, kind: str) -> DlibLayer:
    if version != f"{kind}_2":
        raise r.fail(f"unsupported {kind} version {version!r}")
    window = (r.int(), r.int())
    stride, padding = (r.int(), r.int()), (r.int(), r.int())
    # A window of 0 means "the whole input" (avg_pool_everything).
    return DlibLayer(kind, {}, {"window": window, "stride": stride, "padding": padding})


def _fc(r: _Reader, version: str) -> DlibLayer:
    if version not in ("fc_2", "fc_3"):
        raise r.fail(f"unsupported fc version {version!r}")
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor("fc_ params").reshape(-1)
    wdims, _ = r.alias("fc_ weights"), r.alias("fc_ biases")
    bias_mode = r.int("the fc bias mode")
    for _ in range(4):
        r.float()
    use_bias = r.bool() if version == "fc_3" else True
    nw = num_inputs * num_outputs
    if params.size < nw or wdims[:2] != (num_inputs, num_outputs):
        raise r.fail(f"fc_ params hold {params.size} values with weights {wdims}, expected "
                     f"({num_inputs}, {num_outputs})")
    # tt::gemm(output, input, weights): weights are (num_inputs, num_outputs), row major.
    out = {"weights": params[:nw].reshape(num_inputs, num_outputs)}
    if bias_mode == 0 and use_bias:  # FC_HAS_BIAS = 0
        out["biases"] = params[nw:nw + num_outputs].copy()
    return DlibLayer("fc", out, {"num_outputs": num_outputs, "num_inputs": num_inputs})


def _input(r: _Reader, version: str) -> DlibLayer:
    if version not in ("input_rgb_image", "input_rgb_image_sized"):
        raise r.fail(f"unsupported input layer {version!r}")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int()) if version == "input_rgb_image_sized" else None
    return DlibLayer("input", {}, {"mean_rgb": mean, "size": size})


def _details(r: _Reader) -> DlibLayer:
    version = r.str("a layer name")
    if version.startswith("con_"):
        return _con(r, version)
    if version.startswith("affine_") or version.startswith("bn_"):
        return _affine(r, version)
    if version in ("relu_", "relu_2"):
        disabled = r.bool() if version == "relu_2" else False
        return DlibLayer("relu", {}, {"disabled": disabled})
    if version == "add_prev_":
        return DlibLayer("add_prev", {}, {})
    if version.startswith("max_pool_"):
        return _pool(r, version, "max_pool")
    if version.startswith("avg_pool_"):
        return _pool(r, version, "avg_pool")
    if version.startswith("fc_"):
        return _fc(r, version)
    raise r.fail(f"unsupported dlib layer {version!r}")


def _loss(r: _Reader) -> dict[str, Any]:
    version = r.str("the loss layer name")
    if version == "loss_metric_":
        return {"kind": "metric", "margin": 0.1, "dist_thresh": 0.75}
    if version == "loss_metric_2":
        return {"kind": "metric", "margin": r.float(), "dist_thresh": r.float()}
    raise r.fail(f"unsupported loss layer {version!r}")


def _skip_layer_state(r: _Reader, input_layer: bool, version: int) -> None:
    """The bools and cached tensors dlib stores for training; read and dropped."""
    for _ in range(3):
        r.bool("a layer state flag")
    r.tensor("x_grad")
    r.tensor("cached_output")
    if input_layer:
        r.tensor("grad_final")
        if version >= 3:
            r.int("sample_expansion_factor")
    elif version == 2:
        r.tensor("params_grad")


# ------------------------------------------------------------------ the nest


def parse_dlib_net(data: bytes, wrappers: Sequence[str], origin: str = "<bytes>") -> DlibNet:
    """Parse a serialised `add_loss_layer<LOSS, ...>` network from its bytes.

    Args:
      data: the file's bytes (already decompressed).
      wrappers: the kinds of the nest below the loss layer, outermost first:
        "layer" for every add_layer above the input one, "tag" / "skip" for dlib's
        tagN / skipN. The innermost add_layer, the one over the input layer, is not
        listed.
      origin: a name for the bytes, used in error messages.
    Returns:
      a `DlibNet` whose `layers` run input first; tag and skip entries keep their
      place (config {} - their ids are not in the file).
    Raises:
      DlibFormatError (a ValueError): one line naming `origin`, the byte offset and
      what was expected.
    """
    bad = [w for w in wrappers if w not in WRAPPER_KINDS]
    if bad:
        raise ValueError(f"unknown wrapper kinds {bad}; use {WRAPPER_KINDS}")
    r = _Reader(data, origin)
    r.version((1,), "the loss layer")
    loss = _loss(r)
    versions = []
    for kind in wrappers:
        versions.append(r.version((1, 2) if kind == "layer" else (1,), f"a {kind} layer"))
    in_version = r.version((2, 3), "the add_layer over the input")
    layers = [_input(r, r.str("the input layer name"))]
    layers.append(_details(r))
    _skip_layer_state(r, True, in_version)
    for kind, version in zip(reversed(wrappers), reversed(versions)):
        if kind == "layer":
            layers.append(_details(r))
            _skip_layer_state(r, False, version)
        else:
            layers.append(DlibLayer(kind, {}, {}))
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    return DlibNet(loss, layers)


def read_dlib_net(path: str | Path, wrappers: Sequence[str]) -> DlibNet:
    """`parse_dlib_net` on a file; `.bz2` files (dlib's downloads) are decompressed.

    Raises FileNotFoundError for a missing file and a one-line ValueError for a
    corrupt or truncated one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a dlib network .dat)")
    data = path.read_bytes()
    if data[:3] == b"BZh":
        try:
            data = bz2.decompress(data)
        except (OSError, EOFError, ValueError) as exc:
            raise DlibFormatError(f"{path}: broken bz2 stream ({exc})") from None
    return parse_dlib_net(data, wrappers, origin=str(path))


def face_recognition_models_file(name: str) -> Path:
    """The path of one of the `face_recognition_models` package's model files.

    The package is found without importing it: its `__init__` imports
    pkg_resources, which newer setuptools no longer ship.
    Args:
      name: e.g. "dlib_face_recognition_resnet_model_v1.dat",
        "shape_predictor_68_face_landmarks.dat".
    Raises:
      FileNotFoundError naming the missing package or file and how to install it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: the package face-recognition-models is not "
                                "installed (pip install face-recognition-models)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name}: not found in the face_recognition_models package "
                            f"({list(spec.submodule_search_locations)})")
