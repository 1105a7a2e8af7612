"""Batches of the Sec. 5.1 dataset, grouped by identity, sharded by host.

    loader = make_loader(out_dir, identities_per_batch=4, images_per_identity=4, seed=0)
    for batch in loader:          # dict of (16, ...) numpy arrays
        x = per_device(batch, jax.local_device_count())   # (D, 16 // D, ...)

The shape-centre loss (Eq. 4) compares the shapes of several images of one
identity, so a batch is G identities x K images each, identity-major. The grain
DataLoader samples identities, not images: `IdentityGroups` is a random-access
source whose item g holds K images of identity g, read from the TFDS
ArrayRecord data source (`builder.as_data_source()`, random access, nothing is
held in memory beyond the current batch). Identities with more than K images
give a seeded random K of them (fixed per identity and seed); fewer are repeated
cyclically. Sharding: each JAX process reads its own slice of the shuffled
identities (`grain.sharding.ShardByJaxProcess`, drop_remainder), so the hosts
see disjoint identities; within a host `per_device` splits a batch between the
local devices along identity boundaries when G is a multiple of the devices.
"""

from __future__ import annotations

import numpy as np

from face3d_jax.data import tfds_builder


class IdentityGroups:
    """Random-access source of identity groups over a TFDS data source.

    Args:
      records: the split's data source (`builder.as_data_source()["train"]`).
      groups: [[identity, first record, count], ...] (the dataset's metadata).
      images_per_identity: K.
      seed: seed of the choice of K images (mixed with the epoch-free item
        index, so reading item g is deterministic).
    Item g: dict of (K, ...) arrays of identity groups[g].
    """

    def __init__(self, records, groups, images_per_identity: int, seed: int = 0):
        self.records, self.k, self.seed = records, images_per_identity, seed
        self.groups = np.asarray(groups, np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        # grain stores repr(source) in its iterator state and checks it on
        # restore: it must not contain a memory address.
        return (f"IdentityGroups(identities={len(self.groups)}, images={len(self.records)}, "
                f"images_per_identity={self.k}, seed={self.seed})")

    def __getitem__(self, g: int) -> dict:
        _, first, count = (int(v) for v in self.groups[int(g)])
        if count >= self.k:
            rng = np.random.default_rng([self.seed, int(g)])
            picks = np.sort(rng.choice(count, self.k, replace=False))
        else:
            picks = np.arange(self.k) % count
        items = [self.records[first + int(i)] for i in picks]
        return _stack(items)


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([it[k] for it in items]) for k in items[0]}
    return np.stack([np.asarray(x) for x in items])


class _Flatten:
    """(G, K, ...) -> (G * K, ...): identity-major images."""

    def __new__(cls):
        import grain

        class Flatten(grain.transforms.Map):
            def map(self, batch):
                return _flatten(batch)

        return Flatten()


def _flatten(batch):
    if isinstance(batch, dict):
        return {k: _flatten(v) for k, v in batch.items()}
    return batch.reshape(-1, *batch.shape[2:])


def make_loader(dataset_dir, *, identities_per_batch: int, images_per_identity: int,
                seed: int = 0, num_epochs: int | None = 1, shuffle: bool = True,
                shard_options=None, worker_count: int = 0, split: str = "train"):
    """A grain DataLoader of identity-grouped batches.

    Args:
      dataset_dir: the output folder of `face3d data generate` (or the TFDS
        version folder inside it).
      identities_per_batch: G; images_per_identity: K (batch = G * K images).
      seed: shuffling seed (the order of identities, and which K images).
      num_epochs: passes over the identities (None: forever).
      shard_options: grain ShardOptions (default: by JAX process,
        ShardByJaxProcess(drop_remainder=True)).
      worker_count: grain worker processes (0: in this process).
    Returns:
      A `grain.DataLoader` yielding dicts of (G * K, ...) numpy arrays with the
      dataset's features (labels as a dict of (G * K,) arrays).
    """
    import grain

    builder = tfds_builder.load_builder(dataset_dir)
    groups = builder.info.metadata["spec"]["groups"]
    source = IdentityGroups(builder.as_data_source()[split], groups, images_per_identity, seed)
    if len(source) < identities_per_batch:
        raise ValueError(f"{dataset_dir}: {len(source)} identities, fewer than "
                         f"identities_per_batch = {identities_per_batch}")
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard_options,
                                          shuffle=shuffle, num_epochs=num_epochs, seed=seed)
    return grain.DataLoader(
        data_source=source, sampler=sampler, worker_count=worker_count,
        operations=[grain.transforms.Batch(identities_per_batch, drop_remainder=True),
                    _Flatten()])


def per_device(batch, num_devices: int):
    """Splits a batch's leading axis (N, ...) into (num_devices, N // num_devices, ...).

    With N = G * K identity-major and G a multiple of num_devices, every
    device gets whole identities (Eq. 4 is computed per device). Raises
    ValueError when N does not divide.
    """
    if isinstance(batch, dict):
        return {k: per_device(v, num_devices) for k, v in batch.items()}
    batch = np.asarray(batch)
    if batch.shape[0] % num_devices:
        raise ValueError(f"batch of {batch.shape[0]} does not split into {num_devices} devices")
    return batch.reshape(num_devices, batch.shape[0] // num_devices, *batch.shape[1:])
