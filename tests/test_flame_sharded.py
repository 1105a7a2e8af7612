"""FLAME decoding data-parallel over 8 simulated CPU devices (the conftest's
mesh): the batch sharded on the 'data' axis, the model replicated."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from face3d_jax.flame.forward import flame_forward


@pytest.mark.multidevice
def test_sharded_decode_matches_one_device(default_flame, cpu_mesh):
    rng = np.random.default_rng(0)
    batch = 16
    params = dict(shape=rng.normal(size=(batch, 300)), expression=rng.normal(size=(batch, 100)),
                  global_pose=0.3 * rng.normal(size=(batch, 3)),
                  neck_pose=0.1 * rng.normal(size=(batch, 3)),
                  jaw_pose=np.abs(0.2 * rng.normal(size=(batch, 3))),
                  eye_pose=0.1 * rng.normal(size=(batch, 6)))
    params = {k: v.astype(np.float32) for k, v in params.items()}
    data = NamedSharding(cpu_mesh, P("data"))
    replicated = NamedSharding(cpu_mesh, P())
    model = jax.device_put(default_flame, replicated)
    sharded = {k: jax.device_put(v, data) for k, v in params.items()}
    decode = jax.jit(flame_forward, out_shardings=data)
    out = decode(model, **sharded)
    assert out.vertices.sharding.is_equivalent_to(data, 3)
    assert len(out.vertices.addressable_shards) == 8
    want = jax.jit(flame_forward)(default_flame, **params)
    for a, b in zip(out, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
