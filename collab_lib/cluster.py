"""The study on a Ray cluster: a step's independent jobs as Ray tasks over one shared cache.

``python -m collab_lib run STEP --ray-address auto|HOST:PORT`` (README, "On a Ray cluster"):

- **Training.** The base model, FedYogi's sweep and every unique training job (a stage of a
  chain, a federated run, the ensemble) become one task each, which waits for what its job
  reads: a stage for the stage before it (incremental chains train in order), a FedYogi run
  for the sweep, the ensemble for its members, everything for the base model. Jobs already
  cached get no task. Each task asks for ``cpus`` CPUs (and a GPU where the cluster has them)
  and trains its job in a fresh process of its own at that many torch threads, so a federated
  run's Flower simulation starts its own Ray there, as it does on one machine.
- **Each model's pieces** of ``rq1``, ``rq2``, ``curves`` and ``membership`` (the ``parts``
  of each step's module: a model's perplexity, samples and sandboxed executions; its canary
  exposure, completions, k-extractability, duplication signal; its curve's checkpoints; its
  membership scores): one task each, in the worker's own process.
- **Every step** then runs in this process as it does without a cluster: it finds what the
  workers built cached and only combines it (and does the few small things left).

The workers write into the cache this process uses (``COLLAB_ARTIFACTS``, handed to every
worker: on several machines, a path to the same shared storage on each). Two workers never
build the same artifact: each unique job is submitted once, and :func:`artifacts.build` holds a
lock per artifact while it builds (another run on the same cache waits, then finds it built).
An artifact appears only when whole (a rename), so a worker killed mid-job leaves nothing
half-written; its job's epoch checkpoints stay in scratch, and running the same command again
resumes it, on a cluster or not.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from tqdm import tqdm

from collab_lib import artifacts, collaboration, pipeline, tuning
from collab_lib.config import Config, UserError

log = logging.getLogger(__name__)

BASE, SWEEP = "base", "sweep"  # the tasks that are not a job of the roster


def run(step: str, cfg: Config, address: str, cpus: int = 1) -> None:
    """``pipeline.run(step)`` with every training job and every model's pieces of each seed
    tasks on the cluster at ``address`` (``auto``: the one this machine belongs to)."""
    import ray

    env = {"COLLAB_ARTIFACTS": str(artifacts.artifacts_root())}
    try:
        _reachable(address)  # Ray itself would retry an absent head for many minutes
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(
            f"no Ray cluster at {address!r} ({exc}): start one (`ray start --head`, README "
            "'On a Ray cluster') or leave --ray-address out to run here"
        ) from None
    try:
        for name in pipeline.step_names(step):
            for seed in cfg.run_seeds:
                if name == "train":
                    train(cfg.with_seed(seed), cpus)
                elif pipeline.STEPS[name].parts:
                    pieces(cfg.with_seed(seed), name, cpus)
            pipeline.run(name, cfg)
    finally:
        ray.shutdown()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` head answers on its port (``auto`` is Ray's own to find)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and port.isdigit():
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass


def tasks(cfg: Config) -> dict[str, tuple[str, list[str]]]:
    """Each task of the training step, in an order where a task comes after what it waits
    for: ``ref -> (kind, refs it waits for)``; kind is ``base``, ``sweep`` or ``job``."""
    base, data, psi = collaboration.chain_refs(pipeline.planned_for("train", cfg))
    out: dict[str, tuple[str, list[str]]] = {base: (BASE, [])}
    sweep = tuning.ref(cfg, base, data) if cfg.federated.tuned else None
    for chain in collaboration.jobs(cfg, base, data, psi).values():
        for job in chain:
            waits = [r for r in job.inputs if r in out]  # the model it starts from, members
            if job.step == collaboration.FEDERATED_STEP:
                waits = [base]
                if collaboration.tuned(cfg, job.config["strategy"]):
                    out.setdefault(sweep, (SWEEP, [base]))
                    waits.append(sweep)
            out.setdefault(job.ref, ("job", waits))
    return out


def train(cfg: Config, cpus: int) -> None:
    """Every training task of ``cfg`` not yet cached, on the cluster; waits for all."""
    remote = _remote(_task, cpus)
    planned = pipeline.planned_for("train", cfg)
    submitted: dict[str, object] = {}
    for ref, (kind, waits) in tasks(cfg).items():
        if artifacts.state(*ref.split("/")) == "cached":
            continue
        after = [submitted[w] for w in waits if w in submitted]
        submitted[ref] = remote.remote(cfg, planned, ref, kind, cpus, *after)
    _wait(list(submitted.values()), f"training on Ray (seed {cfg.seed})")
    unseen = [ref for ref in submitted if artifacts.state(*ref.split("/")) != "cached"]
    if unseen:
        raise UserError(
            f"the workers trained {len(unseen)} models this machine cannot find in "
            f"{artifacts.artifacts_root()} ({unseen[0]}, ...): COLLAB_ARTIFACTS must name storage "
            "every machine of the cluster shares, at the same path (README: 'On a Ray cluster')"
        )


def _wait(pending: list, desc: str) -> None:
    """Wait for every task, with progress; a failed one stops the run with what to do."""
    import ray

    with tqdm(total=len(pending), desc=desc, disable=None) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except ray.exceptions.RayError as exc:  # a job failed, or its worker died
                why = str(exc).strip().splitlines()[-1][:300]
                raise UserError(
                    f"a job failed on the Ray cluster ({type(exc).__name__}: {why}); the jobs "
                    "that finished are kept: run the same command again to resume"
                ) from None
            bar.update(len(done))


def pieces(cfg: Config, step: str, cpus: int) -> None:
    """A step's independent pieces (one per model: ``parts`` of its module) on the cluster,
    unless the step is cached; waits for all."""

    own = pipeline.plans(cfg)[step]
    if isinstance(own, UserError):
        raise own
    if all(artifacts.state(*ref) == "cached" for ref in own.values()):
        return
    code = pipeline.STEPS[step].code
    todo = getattr(code, pipeline.STEPS[step].parts)(cfg, pipeline.planned_for(step, cfg))
    remote = _remote(_piece, cpus)
    _wait([remote.remote(p, cpus) for p in todo], f"{step} on Ray (seed {cfg.seed})")


def _remote(fn, cpus: int):
    """``fn`` as a Ray task asking for ``cpus`` CPUs and a GPU where the cluster has them; a
    task that fails is not retried (its run says so)."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return ray.remote(fn).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)


def _piece(piece, threads: int) -> None:
    """One piece, in the worker's own process (torch at ``threads`` threads)."""
    import torch

    torch.set_num_threads(threads)
    piece()


def _task(cfg: Config, planned: dict, ref: str, kind: str, threads: int, *after) -> str:
    """One training task, in a process of its own (spawned: no state of the worker's)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(build, cfg, planned, ref, kind, threads).result()


def _die_with_parent() -> None:
    """On Linux, end this process when the worker that started it dies (a stopped run leaves
    no training behind, holding a GPU and the artifact's lock)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def build(cfg: Config, planned: dict, ref: str, kind: str, threads: int) -> str:
    """Build one task's artifact at ``threads`` torch threads (what a worker's process runs)."""
    _die_with_parent()
    os.environ.pop("RAY_ADDRESS", None)  # a federated run's simulation starts its own Ray
    import torch

    torch.set_num_threads(threads)
    trainer = collaboration.Trainer(cfg, planned)  # builds (or finds) the base model
    if kind == SWEEP:
        trainer.sweep()
    elif kind != BASE:
        chains = collaboration.jobs(cfg, *collaboration.chain_refs(planned))
        job = next(j for chain in chains.values() for j in chain if j.ref == ref)
        trainer.build(job)
    return ref
