"""The collaborative models of the paper (§2.3, §4.1-4.2), names exactly as the paper's.

Every model is a chain of training stages from the base model: a stage trains E epochs on
one organization's training split (``Facebook_Only``; each stage of ``Incremental_F2M2G``)
or on the shuffled union of several (``Centralized_FMG``). A stage's cache key depends only
on its data, its settings and the stage it starts from, so shared prefixes are trained once:
the first stage of ``Incremental_F2M2G`` and of ``Incremental_F2G2M`` *is* ``Facebook_Only``.

Federated models (``Federated_Avg_*``, ``Federated_Yogi_*``) are one job each: Flower's
simulation engine runs :mod:`collab_lib.federated`'s apps, one client per organization.
Every organization's training data carries its planted canaries (:mod:`collab_lib.canaries`).
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, canaries, datasets
from collab_lib.config import Config
from collab_lib.model import (
    build_tokenizer,
    init_model,
    load_checkpoint,
    load_tokenizer,
    stdlib_texts,
)
from collab_lib.training import Curves, pack, train

BASE_STEP = "base_model"
STAGE_STEP = "stage"
FEDERATED_STEP = "federated"
SHORT = {"Facebook": "F", "Microsoft": "M", "Google": "G"}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the paper: how it is trained and on which organizations, in order."""

    name: str
    setting: str  # single | centralized | incremental | federated
    orgs: tuple[str, ...]
    strategy: str | None = None  # FedAvg | FedYogi for federated models


def paper_models() -> list[ModelSpec]:
    """The 12 models of RQ1/RQ2 and the 5 on Microsoft and Google for RQ3."""
    fmg = ("Facebook", "Microsoft", "Google")
    specs = [ModelSpec(f"{o}_Only", "single", (o,)) for o in fmg]
    specs.append(ModelSpec("Centralized_FMG", "centralized", fmg))
    specs += [ModelSpec("Federated_Avg_FMG", "federated", fmg, "FedAvg"),
              ModelSpec("Federated_Yogi_FMG", "federated", fmg, "FedYogi")]  # fmt: skip
    for order in itertools.permutations(fmg):
        specs.append(
            ModelSpec("Incremental_" + "2".join(SHORT[o] for o in order), "incremental", order)
        )
    mg = ("Microsoft", "Google")
    specs.append(ModelSpec("Centralized_MG", "centralized", mg))
    specs += [ModelSpec("Federated_Avg_MG", "federated", mg, "FedAvg"),
              ModelSpec("Federated_Yogi_MG", "federated", mg, "FedYogi")]  # fmt: skip
    specs += [ModelSpec("Incremental_M2G", "incremental", mg),
              ModelSpec("Incremental_G2M", "incremental", mg[::-1])]  # fmt: skip
    return specs


def _stages(spec: ModelSpec) -> list[tuple[str, ...]]:
    """The data of each stage: one per organization in order, or the union at once."""
    if spec.setting == "incremental":
        return [(o,) for o in spec.orgs]
    return [tuple(spec.orgs)]


@dataclass(frozen=True)
class Job:
    """One cached training job: a stage, or a whole federated run."""

    step: str
    config: dict
    inputs: tuple[str, ...]
    data: tuple[str, ...]

    @property
    def key(self) -> str:
        return artifacts.artifact_key(self.step, self.config, self.inputs)

    @property
    def ref(self) -> str:
        return f"{self.step}/{self.key}"


def jobs(cfg: Config, base_ref: str, data_refs: list[str]) -> dict[str, list[Job]]:
    """Each model's chain of jobs; a job's key depends on the job it starts from.

    ``data_refs`` are the datasets and canaries artifacts. Equal chains give equal keys, so
    a prefix shared by several models (``Facebook_Only`` and the first stage of
    ``Incremental_F2M2G``) is one artifact, trained once.
    """
    out: dict[str, list[Job]] = {}
    for spec in paper_models():
        if spec.setting == "federated":
            config = {"strategy": spec.strategy, "federated": cfg.federated,
                      **_stage_config(cfg, spec.orgs)}  # fmt: skip
            out[spec.name] = [Job(FEDERATED_STEP, config, (base_ref, *data_refs), spec.orgs)]
            continue
        chain, prev = [], base_ref
        for data in _stages(spec):
            chain.append(Job(STAGE_STEP, _stage_config(cfg, data), (prev, *data_refs), data))
            prev = chain[-1].ref
        out[spec.name] = chain
    return out


def _stage_config(cfg: Config, data: tuple[str, ...]) -> dict:
    return {"data": list(data), "train": cfg.train, "model": cfg.model, "seed": cfg.seed}


def _data_refs(cfg: Config) -> list[str]:
    return ["{}/{}".format(*datasets.plan(cfg)["datasets"]),
            "{}/{}".format(*canaries.plan(cfg)["canaries"])]  # fmt: skip


def plan(cfg: Config) -> dict[str, tuple[str, str]]:
    """The artifacts of the base model and of every model, keyed without training anything."""
    base = (BASE_STEP, artifacts.artifact_key(BASE_STEP, _base_config(cfg), []))
    out = {"base model": base}
    for name, chain in jobs(cfg, "{}/{}".format(*base), _data_refs(cfg)).items():
        out[name] = (chain[-1].step, chain[-1].key)
    return out


def _base_config(cfg: Config) -> dict:
    return {"model": cfg.model, "train": cfg.train, "seed": cfg.seed}


def build_base_model(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """The base model every model starts from, with its tokenizer (``save_pretrained``).

    ``model.base: stdlib`` (the default): a GPT-2 of the profile's size pretrained on the
    standard library, never on an organization's code. ``model.base: checkpoint``: the given
    checkpoint as it is (the paper's GPT-2 124M), copied into the cache.
    """
    if cfg.model.base == "checkpoint":

        def produce(out: Path) -> dict:
            model, tok = load_checkpoint(cfg.model)
            _save_model(out, model, tok, Curves())
            return {"checkpoint": cfg.model.checkpoint}

        return artifacts.build(BASE_STEP, _base_config(cfg), produce, [], seed=cfg.seed,
                               force=force)  # fmt: skip
    tok_art = build_tokenizer(cfg)

    def pretrain(out: Path) -> dict:
        tok = load_tokenizer(tok_art.path)
        model = init_model(cfg.model, len(tok), cfg.seed)
        data = pack(
            stdlib_texts(cfg.model.pretrain_corpus_mb, cfg.seed + 1), tok, cfg.model.context
        )
        run = cfg.train.__class__(**{**cfg.train.__dict__, "epochs": cfg.model.pretrain_epochs})
        curves = train(model, data, run, cfg.seed, checkpoint_dir=out.parent / f".ckpt-{out.name}")
        _save_model(out, model, tok, curves)
        shutil.rmtree(out.parent / f".ckpt-{out.name}", ignore_errors=True)
        return {"sequences": len(data), "final_loss": curves.epoch_loss[-1]}

    return artifacts.build(BASE_STEP, _base_config(cfg), pretrain, [], seed=cfg.seed, force=force)


def _save_model(out: Path, model, tok, curves) -> None:
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    (out / "curves.json").write_text(json.dumps(curves.__dict__))


def training_texts(cfg: Config) -> dict[str, list[str]]:
    """Each organization's training documents, its planted canaries included."""
    ds = datasets.datasets_for(cfg)
    planted = canaries.load(canaries.build_canaries(cfg))
    return {
        o.name: canaries.training_texts(ds, planted, o.name) for o in cfg.datasets.organizations
    }


def build_models(
    cfg: Config, *, force: bool = False, names: list[str] | None = None
) -> dict[str, artifacts.Artifact]:
    """Train (or find cached) all 17 models, or those ``names``; shared stages train once."""
    texts = training_texts(cfg)
    base = build_base_model(cfg, force=force)
    tok = load_tokenizer(base.path / "model")
    packed: dict[str, object] = {}

    def data_for(orgs: tuple[str, ...]):
        import torch

        for o in orgs:
            if o not in packed:
                packed[o] = pack(texts[o], tok, cfg.model.context)
        return torch.cat([packed[o] for o in orgs])

    built: dict[str, artifacts.Artifact] = {base.ref: base}
    out: dict[str, artifacts.Artifact] = {}
    forced: set[str] = set()  # with force, a shared stage is still retrained only once
    chains = jobs(cfg, base.ref, _data_refs(cfg))
    unknown = set(names or ()) - set(chains)
    if unknown:
        raise KeyError(f"unknown models {sorted(unknown)} (known: {', '.join(chains)})")
    chains = {n: c for n, c in chains.items() if names is None or n in names}
    for name, chain in tqdm(chains.items(), desc="models", disable=None):
        for job in chain:
            if job.ref in built:
                continue
            scratch = artifacts.scratch_dir(job.step, job.config, list(job.inputs))
            if job.step == FEDERATED_STEP:
                produce = partial(_train_federated, cfg, job, base, texts, scratch)
            else:
                produce = partial(_train_stage, cfg, job, built[job.inputs[0]], tok, data_for,
                                  scratch)  # fmt: skip
            built[job.ref] = artifacts.build(
                job.step, job.config, produce, list(job.inputs), seed=cfg.seed,
                force=force and job.key not in forced,
            )  # fmt: skip
            forced.add(job.key)
            shutil.rmtree(scratch, ignore_errors=True)
        out[name] = built[chain[-1].ref]
    return out


def _train_stage(cfg: Config, job: Job, prev, tok, data_for, scratch: Path, dest: Path) -> dict:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(prev.path / "model")
    curves = train(model, data_for(job.data), cfg.train, cfg.seed, checkpoint_dir=scratch)
    _save_model(dest, model, tok, curves)
    return {"final_loss": curves.epoch_loss[-1], "data": list(job.data)}


def _train_federated(cfg: Config, job: Job, base, texts, scratch: Path, dest: Path) -> dict:
    """Run one federated model on Flower's simulation engine (resumes from its last round)."""
    from collab_lib.federated import launch

    app, rc, _ = _prepare_federation(cfg, job, base.path, texts, scratch, dest)
    launch.simulate(app, rc, artifacts.artifacts_root() / ".flwr")
    curves = json.loads((dest / "curves.json").read_text())
    return {"final_loss": curves["round_loss"][-1], "data": list(job.data),
            "rounds": rc["num-rounds"]}  # fmt: skip


def _prepare_federation(
    cfg: Config, job: Job, base: Path, texts, work: Path, out: Path, *, simulation: bool = True
):
    """Each organization's training data where its client reads it, and the Flower app."""
    from collab_lib.federated import launch

    nodes = []
    for org in job.data:
        path = work / "nodes" / f"{org}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"content": t}) + "\n" for t in texts[org])
            path.with_suffix(".tmp").replace(path)
        nodes.append(launch.NodeData(org, path))
    rc = launch.run_config(
        cfg, job.config["strategy"], nodes, base, out, work / "rounds", simulation=simulation
    )
    return launch.write_app(work / "app", rc), rc, nodes


def federation(
    cfg: Config,
    name: str,
    work: Path,
    *,
    link_port: int = 8000,
    node_ports: list[int] | None = None,
) -> tuple[list, dict[str, str], Path]:
    """Set up a deployment-engine run of one federated model in ``work``.

    Returns the processes to start (SuperLink, one SuperNode per organization, ``flwr
    run``), the environment they need, and where the ServerApp will save the model.
    """
    from collab_lib.federated import launch

    chain = jobs(cfg, "", _data_refs(cfg)).get(name)
    if not chain or chain[0].step != FEDERATED_STEP:
        known = [s.name for s in paper_models() if s.setting == "federated"]
        raise KeyError(f"{name!r} is not a federated model (one of: {', '.join(known)})")
    texts = training_texts(cfg)
    base = build_base_model(cfg)
    work = work.resolve()
    app, _, nodes = _prepare_federation(
        cfg, chain[0], base.path, texts, work, work / "output", simulation=False
    )
    home = work / "flwr-home"
    launch.write_connection(home, port=link_port)
    procs = launch.deployment(app, nodes, link_port=link_port, node_ports=node_ports)
    return procs, launch.flower_env(home), work / "output"


# --------------------------------------------------------------------------- reading back


class ModelsNotTrained(RuntimeError):
    """The book or a later step asked for models the train step has not built."""


def load_models(cfg: Config) -> dict[str, artifacts.Artifact]:
    """The profile's 17 models (and ``"base model"``) from the cache, without training."""
    found, missing = {}, []
    for name, (step, key) in plan(cfg).items():
        art = artifacts.load(step, key)
        if art is None:
            missing.append(name)
        else:
            found[name] = art
    if missing:
        raise ModelsNotTrained(
            f"{len(missing)} models of profile {cfg.profile!r} are not trained yet "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): run "
            f"`python -m collab_lib run train --profile {cfg.profile}`"
        )
    return found


def chain(art: artifacts.Artifact) -> list[artifacts.Artifact]:
    """The stages of a model, first to last (a federated model is one job)."""
    out = [art]
    while out[0].step == STAGE_STEP:
        step, _, key = out[0].manifest["inputs"][0].rpartition("/")
        if step != STAGE_STEP:
            break
        out.insert(0, artifacts.load(step, key))
    return out


def model_curves(art: artifacts.Artifact) -> dict:
    """Loss per optimizer step over a model's stages, or per round for a federated model."""
    if art.step == FEDERATED_STEP:
        return json.loads(art.file("curves.json").read_text()) | {"kind": "rounds"}
    steps, bounds = [], []
    for stage in chain(art):
        steps += json.loads(stage.file("curves.json").read_text())["step_loss"]
        bounds.append(len(steps))
    return {"kind": "steps", "step_loss": steps, "stage_ends": bounds}


def all_curves(models: dict[str, artifacts.Artifact]) -> dict[str, dict]:
    """The loss curves of the 17 models (the base model's pretraining left out)."""
    return {spec.name: model_curves(models[spec.name]) for spec in paper_models()}


def models_table(models: dict[str, artifacts.Artifact]) -> pd.DataFrame:
    """One row per model: how it was trained, its final training loss and training time."""

    rows = []
    for spec in paper_models():
        art = models[spec.name]
        jobs_ = chain(art)
        rows.append(
            {
                "Model": spec.name,
                "Setting": spec.setting,
                "Data": (" → " if spec.setting == "incremental" else " + ").join(
                    SHORT.get(o, o) for o in spec.orgs
                ),
                "Strategy": spec.strategy or "",
                "Jobs": len(jobs_),
                "Final training loss": art.metrics["final_loss"],
                "Time (s)": sum(j.manifest["wall_s"] for j in jobs_),
            }
        )
    return pd.DataFrame(rows)
