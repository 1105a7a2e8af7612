"""`face3d train`: the main job (Sec. 3.3, 4, 5.2), data parallel over every device.

    train(load("tiny"), "runs/tiny")

What a run does:
  1. the dataset: `config.data.dataset_dir`, or <workdir>/data generated from
     the teacher world (or a converted StyleGAN2) when missing (resumable);
     and F's teacher-world head when the config asks for one
     (<workdir>/identity_head.npz, fitted when missing: `face3d_train.identity`);
  2. the networks and the train state, or the state of the last checkpoint in
     <workdir>/checkpoints with the data position it was saved at; a new run
     starts E_shape from its shape prior when the config asks for one
     (<workdir>/shape_prior, trained when missing: `face3d_train.prior`);
  3. one `jax.sharding.Mesh` over all devices (axis "data"): batches are
     sharded along it, the state is replicated, and the step is jit-compiled
     ahead of time with explicit shardings and the state donated; the compiled
     step's memory is printed before step 1. Multi-host: call
     `jax.distributed.initialize()` first (`face3d train --distributed`); each
     process reads its own identities;
  4. the loop: steps, metrics to TensorBoard and metrics.jsonl (process 0), a
     progress bar with images/s and ETA, periodic asynchronous orbax
     checkpoints (the last `checkpoint.keep`), and evaluation every
     `eval.every` steps (and at step 0) on held-out teacher identities:
     eval/shape_error_mm (and over NoW's face region, eval/shape_error_now_mm),
     eval/albedo_psnr and the rendering losses;
  5. a non-finite step is skipped by the step itself and logged; after
     `max_bad_steps` in a row the run stops with RuntimeError and its last
     good checkpoint intact (a state with a failing streak is never saved).

Step selector (`config.selector`): "switch" (the design card: one compiled
step, `lax.switch` on the step counter picks the phase) or "phase" (the same
step function with the phase fixed, one executable per phase, the host
choosing by the same schedule). Both compute the same; on XLA:CPU the
conditional made each step about 3x slower (measured: 4.4 / 1.9 / 5.3 s against
1.0 / 0.7 / 1.8 s for the pretrain / shape / albedo phases of `tiny`), so the
CPU config uses "phase".
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from face3d_train import evaluation
from face3d_train.checkpoint import Checkpointer
from face3d_train.data import Batches, ensure_dataset, mean_albedo, to_global
from face3d_train.identity import ensure_identity_head
from face3d_train.metrics import MetricWriter
from face3d_train.prior import ensure_shape_prior
from face3d_train.state import PHASES, make_setup
from face3d_train.step import make_step

log = logging.getLogger(__name__)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh ("data") over `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def load_model(config):
    from face3d_jax.flame import default_model, load

    return load(config.model.flame) if config.model.get("flame") else default_model()


class Trainer:
    """The compiled pieces of a run on a mesh (used by `train` and the tests).

    Args:
      config: a training ConfigDict; model: the FLAME model; mesh: the mesh.
      key: the parameters' PRNG key (default: from config.seed).
      identity_head: F's teacher-world head (`face3d_train.identity`), if any.
    """

    def __init__(self, config, model, mesh: Mesh, key=None, identity_head=None):
        self.config, self.model, self.mesh = config, model, mesh
        key = jax.random.key(int(config.seed)) if key is None else key
        k_init, self.state_key = jax.random.split(key)
        self.setup = make_setup(config, model, k_init, identity_head=identity_head)
        self.replicated = NamedSharding(mesh, P())
        self.data_sharding = NamedSharding(mesh, P("data"))
        self.frozen = jax.device_put(self.setup.frozen, self.replicated)
        self._compiled = {}
        self.selector = config.get("selector", "switch")
        if self.selector not in ("switch", "phase"):
            raise ValueError(f"selector must be 'switch' or 'phase', got {self.selector!r}")
        batch = int(config.data.identities_per_batch) * int(config.data.images_per_identity)
        if batch % mesh.size:
            raise ValueError(f"batch {batch} (data.identities_per_batch x images_per_identity) "
                             f"does not split over {mesh.size} devices")

    def init_state(self, prior=None, albedo_base=None):
        """The state at step 0; prior: E_shape's (params, buffers) to start from
        (the shape prior), else the networks' initialisation; albedo_base: see
        `Setup.init_state`."""
        return jax.device_put(self.setup.init_state(self.state_key, prior, albedo_base),
                              self.replicated)

    def abstract_state(self):
        shapes = jax.eval_shape(self.setup.init_state, self.state_key)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                           sharding=self.replicated), shapes)

    def _fn(self, phase):
        step = make_step(self.setup, phase=phase)
        return jax.jit(step, in_shardings=(self.replicated, self.data_sharding, self.replicated),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=0)

    def compiled(self, state, batch, phase: int | None = None):
        """The AOT-compiled step for `phase` (None: the switch step)."""
        key = None if self.selector == "switch" else phase
        if key not in self._compiled:
            start = time.perf_counter()
            lowered = self._fn(key).lower(state, batch, self.frozen)
            self._compiled[key] = exe = lowered.compile()
            mem = exe.memory_analysis()
            what = "step" if key is None else f"{PHASES[key]} step"
            if mem is not None:
                log.info("compiled the %s in %.0f s; memory: arguments %.0f MiB, outputs "
                         "%.0f MiB (aliased %.0f MiB), temporaries %.0f MiB", what,
                         time.perf_counter() - start, mem.argument_size_in_bytes / 2**20,
                         mem.output_size_in_bytes / 2**20, mem.alias_size_in_bytes / 2**20,
                         mem.temp_size_in_bytes / 2**20)
        return self._compiled[key]

    def step(self, state, batch, step_number: int):
        phase = int(self.setup.phase_of(step_number))
        return self.compiled(state, batch, phase)(state, batch, self.frozen)


def _scalars(metrics: dict, phase: int) -> dict:
    """The metrics of the phase that ran (the others are zeros), as floats."""
    name = PHASES[phase]
    keep = {k: float(v) for k, v in metrics.items()
            if not any(k.startswith(f"{p}/") for p in PHASES if p != name)}
    if name == "shape":
        keep = {k: v for k, v in keep.items() if not k.startswith(("gan/", "grad_norm/g",
                                                                   "grad_norm/d"))}
    else:
        keep.pop("grad_norm/shape", None)
    return {f"train/{k}": v for k, v in keep.items()}


def train(config, workdir, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Runs (or resumes) training; returns the last evaluation's metrics.

    stop_after: stop after this many steps of this call (tests use it to
    interrupt a run); the schedule still runs to config.schedule.total_steps.
    """
    from tqdm import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    model = load_model(config)
    folder = ensure_dataset(config, workdir, progress=progress)
    head = ensure_identity_head(config, workdir, model=model, progress=progress)
    mesh = make_mesh()
    trainer = Trainer(config, model, mesh, identity_head=head)
    batches = Batches(folder, config, seed=int(config.seed))
    held = evaluation.HeldOutEval(trainer, config, dataset=folder)
    total = int(config.schedule.total_steps)
    ck = config.checkpoint
    with Checkpointer(workdir / "checkpoints", keep=int(ck.keep), save_every=int(ck.every),
                      async_save=bool(ck.async_save)) as ckpt, MetricWriter(workdir) as writer:
        start = ckpt.latest_step()
        if start is None:
            prior = ensure_shape_prior(config, workdir, trainer.setup, progress=progress)
            base = None
            if config.model.albedo.get("residual_over_mean", False):
                base = held.mean_albedo if held.mean_albedo is not None else mean_albedo(folder)
            state, start = trainer.init_state(prior, base), 0
        else:
            state, meta = ckpt.restore(trainer.abstract_state(), start)
            batches.seek(meta["data_position"])
            log.info("resumed from %s at step %d", workdir / "checkpoints", start)
        if start == 0:
            result = held.evaluate(state)
            writer.scalars(0, result)
        result = {}
        batch_size = int(config.data.identities_per_batch) * int(config.data.images_per_identity)
        # Counted in images, so the bar shows images/s and the ETA.
        bar = tqdm(total=total * batch_size, initial=start * batch_size, unit="img",
                   desc="train", disable=not progress)
        step = start
        end = total if stop_after is None else min(total, start + stop_after)
        for step in range(start, end):
            batch = to_global(next(batches), trainer.data_sharding)
            phase = int(trainer.setup.phase_of(step))
            state, metrics = trainer.step(state, batch, step)
            done = step + 1
            log_now = done % int(config.log.every) == 0 or done == end
            bad = int(state.bad_steps)
            if bad:
                log.warning("step %d: non-finite loss or gradient in the %s phase; update "
                            "skipped (%d in a row)", step, PHASES[phase], bad)
                log_now = True
            if log_now:
                scalars = _scalars(jax.device_get(metrics), phase)
                writer.scalars(done, scalars)
                bar.set_postfix(phase=PHASES[phase],
                                loss=f"{scalars.get(f'train/{PHASES[phase]}/loss', 0):.3f}")
            bar.update(batch_size)
            if bad >= int(config.max_bad_steps):
                bar.close()
                raise RuntimeError(f"{bad} non-finite steps in a row at step {step}: stopped; the "
                                   f"last good checkpoint is in {workdir / 'checkpoints'}")
            if done % int(config.eval.every) == 0 or done == total:
                result = held.evaluate(state)
                writer.scalars(done, result)
                if done % int(config.log.images_every) == 0 or done == total:
                    writer.images(done, held.images(state))
                log.info("step %d: %s", done, json.dumps({k: round(v, 4)
                                                          for k, v in result.items()}))
            if not bad:
                ckpt.save(done, state, {"data_position": batches.position(), "step": done},
                          force=done == total)
        bar.close()
        ckpt.wait()
    if step + 1 == total:
        (workdir / "done.json").write_text(json.dumps({"step": total, **result}) + "\n")
    return result
