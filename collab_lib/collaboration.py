"""The collaborative models of the study (§2.3, §4.1-4.2), named in the paper's pattern.

The roster comes from the profile's organizations (:func:`roster`): with the paper's three,
listed Facebook, Microsoft, Google, the names are exactly the paper's (``Centralized_FMG``,
``Incremental_F2M2G``, ...); with a user's own organizations the same pattern is built from
their names and short letters.

Every model is a chain of training stages from the base model: a stage trains E epochs on
one organization's training split (``Facebook_Only``; each stage of ``Incremental_F2M2G``)
or on the shuffled union of several (``Centralized_FMG``). A stage's cache key depends only
on its data, its settings and the stage it starts from, so shared prefixes are trained once:
the first stage of ``Incremental_F2M2G`` and of ``Incremental_F2G2M`` *is* ``Facebook_Only``.

Federated models (``Federated_Avg_*``, ``Federated_Yogi_*``) are one job each: Flower's
simulation engine runs :mod:`collab_lib.federated`'s apps, one client per organization.
Every organization's training data carries its planted canaries (:mod:`collab_lib.canaries`).

Beyond the paper, where the profile asks: ``Ensemble_*`` (:mod:`collab_lib.ensemble`) is a
job that trains nothing, a mixture of the single-organization models; ``*_DP<σ>`` and
``*_OrgDP<σ>`` are the DP twins of a model (:mod:`collab_lib.privacy`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, canaries, datasets, privacy, psi, tuning
from collab_lib.config import Config, ConfigError, weights_config

# what a model is for: the study on all organizations, the RQ3 pair, the pair's models again
# on PSI-deduplicated data, or a model again under differential privacy (beyond the paper)
RQ12, RQ3, PSI, DP = "RQ1/RQ2", "RQ3", "PSI", "DP"
PSI_DATA = "shared clones removed (PSI)"  # how tables say what a PSI model trained on
BASE = "base model"  # the row standing where the paper has "GPT-2"
BASE_STEP = "base_model"
STAGE_STEP = "stage"
FEDERATED_STEP = "federated"
ENSEMBLE = ENSEMBLE_STEP = "ensemble"  # the setting, and its job's step
SWEEP = "FedYogi sweep"  # its entry in the train step's plan


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: how it is trained and on which organizations, in order."""

    name: str
    setting: str  # single | centralized | incremental | federated | ensemble
    orgs: tuple[str, ...]
    strategy: str | None = None  # FedAvg | FedYogi for federated models
    # RQ3: the models of the cross-organization pair; PSI: those trained again on the pair's
    # data after private clone removal (:mod:`collab_lib.psi`); DP: a model trained again
    # under differential privacy
    rq: str = RQ12
    privacy: tuple[str, float] | None = None  # DP: (example | organization, noise multiplier)

    @property
    def trains(self) -> bool:
        """Whether it has weights of its own (the ensemble mixes its members' at inference)."""
        return self.setting != ENSEMBLE

    @property
    def main(self) -> bool:
        """One of the study's models on all organizations (not the RQ3 pair's, not PSI's)."""
        return self.rq == RQ12


def roster(cfg: Config) -> list[ModelSpec]:
    """Every model of the study, from the profile's organizations in the order it lists them.

    One ``<Name>_Only`` per organization; on all of them ``Centralized_``, ``Federated_Avg_``
    and ``Federated_Yogi_`` + their short letters, and ``Incremental_`` for every order (or
    the profile's list); then the same union models and both orders on the RQ3 pair. A model
    that two groups would both name (two organizations in all) is listed once. Beyond the
    paper: the ensemble (``ensemble.enabled``), the pair's models of ``psi.models`` again as
    ``<model>_PSI`` on PSI-deduplicated data, and the DP twins (:func:`dp_models`).
    """
    orgs = tuple(o.name for o in cfg.datasets.organizations)
    short = short_letters(cfg)
    specs = [ModelSpec(f"{o}_Only", "single", (o,)) for o in orgs]
    orders = cfg.collaboration.incremental_orders
    if orders is None:
        orders = tuple(itertools.permutations(orgs))
    specs += _union_models(orgs, short, RQ12)
    specs += [_incremental(order, short, RQ12) for order in orders]
    pair = datasets.rq3_pair(cfg)
    specs += _union_models(pair, short, RQ3)
    specs += [_incremental(order, short, RQ3) for order in (pair, pair[::-1])]
    if cfg.ensemble.enabled:
        tag = "".join(short[o] for o in orgs)
        specs.append(ModelSpec(f"Ensemble_{tag}", ENSEMBLE, orgs))
    unique: dict[str, ModelSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    for plain, name in psi.psi_models(cfg):
        unique[name] = dataclasses.replace(unique[plain], name=name, rq=PSI)
    for plain, name, level, noise in dp_models(cfg):
        unique[name] = dataclasses.replace(unique[plain], name=name, rq=DP, privacy=(level, noise))
    return list(unique.values())


def dp_models(cfg: Config) -> list[tuple[str, str, str, float]]:
    """``(plain model, DP model, level, noise multiplier)`` of the profile's DP twins, all on
    every organization: the centralized model and FedAvg under example-level DP-SGD, FedAvg
    under organization-level DP (``privacy.noise_multipliers``, ``federated_noise``,
    ``organization_noise``)."""
    tag = "".join(o.short for o in cfg.datasets.organizations)
    p, cen, fed = cfg.privacy, f"Centralized_{tag}", f"Federated_Avg_{tag}"
    return (
        [(cen, f"{cen}_DP{n:g}", privacy.EXAMPLE, n) for n in p.noise_multipliers]
        + [(fed, f"{fed}_DP{n:g}", privacy.EXAMPLE, n) for n in p.federated_noise]
        + [(fed, f"{fed}_OrgDP{n:g}", privacy.ORGANIZATION, n) for n in p.organization_noise]
    )


def _union_models(orgs: tuple[str, ...], short: dict[str, str], rq: str) -> list[ModelSpec]:
    tag = "".join(short[o] for o in orgs)
    return [
        ModelSpec(f"Centralized_{tag}", "centralized", orgs, rq=rq),
        ModelSpec(f"Federated_Avg_{tag}", "federated", orgs, "FedAvg", rq=rq),
        ModelSpec(f"Federated_Yogi_{tag}", "federated", orgs, "FedYogi", rq=rq),
    ]


def _incremental(order: tuple[str, ...], short: dict[str, str], rq: str) -> ModelSpec:
    name = "Incremental_" + "2".join(short[o] for o in order)
    return ModelSpec(name, "incremental", tuple(order), rq=rq)


def model_names(cfg: Config) -> list[str]:
    """Every model of the study, the base model first (the train step's models)."""
    return [BASE, *(s.name for s in roster(cfg))]


def model_refs(cfg: Config, planned: dict) -> dict[str, str]:
    """Each model's ``step/key`` (the base model first), from the train step's plan."""
    return {name: artifacts.ref(planned[name]) for name in model_names(cfg)}


def plan_on_models(step: str, config: dict, cfg: Config, upstream: dict) -> dict[str, tuple]:
    """The key of a step that reads the datasets and every model (rq1, membership)."""
    refs = [artifacts.ref(upstream["datasets"]), *model_refs(cfg, upstream).values()]
    return {step: (step, artifacts.artifact_key(step, config, refs))}


SETTINGS = ("single", "centralized", "federated", "incremental", ENSEMBLE)


def chosen_models(cfg: Config, chosen: Sequence[str] | None, key: str) -> list[str]:
    """The base model and the models a profile key lists (null: every model).

    An entry is a model's name or a setting (``single``, ``centralized``, ``federated``,
    ``incremental``, ``ensemble``: that setting's models on all organizations, not the RQ3
    pair's nor the DP twins), so a profile that extends another with its own organizations
    keeps a valid list.
    """
    specs = roster(cfg)
    if chosen is None:
        return [BASE, *(s.name for s in specs)]
    names = [s.name for s in specs]
    unknown = [m for m in chosen if m not in names and m not in SETTINGS]
    if unknown:
        raise ConfigError(
            f"{cfg.source}: {key}: unknown model {unknown[0]!r} (a setting: "
            f"{', '.join(SETTINGS)}; or a model: {', '.join(names)})"
        )
    keep = [s.name for s in specs if s.name in chosen or (s.setting in chosen and s.main)]
    return [BASE, *keep]


def short_letters(cfg: Config) -> dict[str, str]:
    return {o.name: o.short for o in cfg.datasets.organizations}


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
    deduplicated: bool = False  # trains on the organizations' PSI-deduplicated data

    @property
    def dp(self) -> dict | None:
        """``{"level", "noise", "clip"}`` (and ``"batch"`` at the example level) where the job
        trains under differential privacy."""
        return self.config.get("dp")

    @property
    def key(self) -> str:
        return artifacts.artifact_key(self.step, self.config, self.inputs)

    @property
    def ref(self) -> str:
        return f"{self.step}/{self.key}"


def jobs(
    cfg: Config, base_ref: str, data_refs: list[str], psi_ref: str = ""
) -> dict[str, list[Job]]:
    """Each model's chain of jobs; a job's key depends on the job it starts from.

    ``data_refs`` are the datasets and canaries artifacts; ``psi_ref`` the psi step's, which
    the ``_PSI`` models' jobs read too. Equal chains give equal keys, so a prefix shared by
    several models (``Facebook_Only`` and the first stage of ``Incremental_F2M2G``) is one
    artifact, trained once.
    """
    out: dict[str, list[Job]] = {}
    for spec in roster(cfg):
        if not spec.trains:  # the ensemble: its members' final jobs are its inputs
            members = [f"{o}_Only" for o in spec.orgs]
            config = {"members": members, "weights": cfg.ensemble.weights}
            inputs = tuple(out[m][-1].ref for m in members)
            out[spec.name] = [Job(ENSEMBLE_STEP, config, inputs, ())]
            continue
        dedup = spec.rq == PSI
        # the deduplicated data: its removal rule in the key, the psi artifact among the inputs
        extra = {"psi": cfg.psi.removal} if dedup else {}
        extra |= _dp_config(cfg, spec)
        refs = (*data_refs, psi_ref) if dedup else tuple(data_refs)
        if spec.setting == "federated":
            config = {
                "strategy": spec.strategy,
                **_federated_config(cfg, spec.strategy),
                **_stage_config(cfg, spec.orgs),
                **extra,
            }
            inputs = (base_ref, *refs)
            if tuned(cfg, spec.strategy):  # the sweep's pair
                inputs += (tuning.ref(cfg, base_ref, data_refs),)
            out[spec.name] = [Job(FEDERATED_STEP, config, inputs, spec.orgs, dedup)]
            continue
        chain, prev = [], base_ref
        for data in _stages(spec):
            config = _stage_config(cfg, data) | extra
            chain.append(Job(STAGE_STEP, config, (prev, *refs), data, dedup))
            prev = chain[-1].ref
        out[spec.name] = chain
    return out


def _dp_config(cfg: Config, spec: ModelSpec) -> dict:
    """A DP twin's mechanism, in its jobs' keys (nothing for the other models)."""
    if spec.privacy is None:
        return {}
    level, noise = spec.privacy
    p = cfg.privacy
    if level == privacy.ORGANIZATION:
        return {"dp": {"level": level, "noise": noise, "clip": p.organization_clip}}
    batch = privacy.dp_batch(cfg)
    return {"dp": {"level": level, "noise": noise, "clip": p.max_grad_norm, "batch": batch}}


def _federated_config(cfg: Config, strategy: str | None) -> dict:
    """What a federated job depends on beyond its data: rounds, and FedYogi's own settings
    for FedYogi only (changing the sweep never retrains a FedAvg model)."""
    f = cfg.federated
    out: dict = {"rounds": f.rounds or cfg.train.epochs}
    if strategy == "FedYogi":
        out["yogi"] = {
            "eta": f.yogi_eta,
            "tau": f.yogi_tau,
            "beta": [f.yogi_beta_1, f.yogi_beta_2],
            "sweep": f.yogi_sweep if f.tuned else None,
        }
    return out


def tuned(cfg: Config, strategy: str | None) -> bool:
    """Whether this job's server rate comes from the profile's FedYogi sweep."""
    return strategy == "FedYogi" and cfg.federated.tuned


def _stage_config(cfg: Config, data: tuple[str, ...]) -> dict:
    return {"data": list(data), "train": cfg.train, "model": cfg.model, "seed": cfg.seed}


def data_refs(planned: dict) -> list[str]:
    """The datasets and canaries artifacts every training job reads."""
    return [artifacts.ref(planned["datasets"]), artifacts.ref(planned["canaries"])]


def chain_refs(planned: dict) -> tuple[str, list[str], str]:
    """:func:`jobs`'s refs, from the train step's plans: the base model's, the data's (datasets
    and canaries) and the psi step's."""
    return artifacts.ref(planned[BASE]), data_refs(planned), _psi_ref(planned)


def _psi_ref(planned: dict) -> str:
    """The psi artifact the ``_PSI`` models' jobs read."""
    return artifacts.ref(planned[psi.STEP])


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The artifacts of the base model and of every model, keyed without training anything,
    from the datasets and canaries steps' plans."""
    base = (BASE_STEP, artifacts.artifact_key(BASE_STEP, _base_config(cfg), []))
    out = {BASE: base}
    base_ref, data = artifacts.ref(base), data_refs(upstream)
    if cfg.federated.tuned:
        out[SWEEP] = tuple(tuning.ref(cfg, base_ref, data).split("/"))
    for name, chain_ in jobs(cfg, base_ref, data, _psi_ref(upstream)).items():
        out[name] = (chain_[-1].step, chain_[-1].key)
    return out


def _base_config(cfg: Config) -> dict:
    return {"model": cfg.model, "train": weights_config(cfg.train), "seed": cfg.seed}


def build_base_model(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """The base model every model starts from, with its tokenizer (``save_pretrained``).

    ``model.base: stdlib`` (the default): a GPT-2 of the profile's size pretrained on the
    standard library, never on an organization's code. ``model.base: checkpoint``: the given
    checkpoint as it is (the paper's GPT-2 124M), copied into the cache.
    """
    from collab_lib.model import (
        build_tokenizer,
        init_model,
        load_checkpoint,
        load_tokenizer,
        stdlib_texts,
    )
    from collab_lib.training import Curves, pack, train

    if cfg.model.base == "checkpoint":

        def produce(out: Path) -> dict:
            model, tok = load_checkpoint(cfg.model)
            _save_model(out, model, tok, Curves())
            return {"checkpoint": cfg.model.checkpoint}

        return artifacts.build(
            BASE_STEP, _base_config(cfg), produce, [], seed=cfg.seed, force=force
        )
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


def training_texts(
    cfg: Config, planned: dict, *, deduplicated: bool = False
) -> dict[str, list[str]]:
    """Each organization's training documents, its planted canaries (and audit canaries)
    included; with ``deduplicated``, without the lines PSI found shared (the canaries, the
    study's instrument, stay the same)."""
    ds = datasets.load(cfg, planned)
    can = canaries.require(cfg, planned)
    planted = canaries.planted(can)
    art = psi.load(cfg, planned) if deduplicated else None
    return {
        o.name: canaries.training_texts(
            ds, planted, o.name, psi.deduplicated(art, ds, o.name) if art else None, can
        )
        for o in cfg.datasets.organizations
    }


def build_sweep(
    cfg: Config, planned: dict, *, force: bool = False, texts=None
) -> artifacts.Artifact:
    """FedYogi's server-rate sweep of the profile (:mod:`collab_lib.tuning`), cached."""
    planted = {p["text"] for p in canaries.planted(canaries.require(cfg, planned))}
    base = build_base_model(cfg)
    texts = texts or training_texts(cfg, planned)
    return tuning.build_sweep(cfg, base, texts, data_refs(planned), planted, force=force)


class Trainer:
    """What the training jobs of one run read, each loaded once and only when a job needs
    it: the base model and its tokenizer, the organizations' texts (PSI-deduplicated ones
    too) packed into sequences, and FedYogi's sweep. :meth:`build` trains one job (or finds
    it cached): :func:`build_models` calls it for every job in order, a cluster's worker for
    the job it was given (:mod:`collab_lib.cluster`)."""

    def __init__(self, cfg: Config, planned: dict, *, force: bool = False) -> None:
        from collab_lib.model import load_tokenizer

        self.cfg, self.planned, self.force = cfg, planned, force
        self.base = build_base_model(cfg, force=force)
        self.tok = load_tokenizer(self.base.path / "model")
        self.built: dict[str, artifacts.Artifact] = {self.base.ref: self.base}
        self._texts: dict[bool, dict[str, list[str]]] = {}
        self._packed: dict[tuple[str, bool], object] = {}
        self._sweep: artifacts.Artifact | None = None

    def texts(self, dedup: bool = False) -> dict[str, list[str]]:
        if dedup not in self._texts:  # the deduplicated ones only when a _PSI model trains
            self._texts[dedup] = training_texts(self.cfg, self.planned, deduplicated=dedup)
        return self._texts[dedup]

    def data(self, orgs: tuple[str, ...], dedup: bool = False):
        import torch

        from collab_lib.training import pack

        for o in orgs:
            if (o, dedup) not in self._packed:
                self._packed[o, dedup] = pack(
                    self.texts(dedup)[o], self.tok, self.cfg.model.context
                )
        return torch.cat([self._packed[o, dedup] for o in orgs])

    def sweep(self) -> artifacts.Artifact:
        if self._sweep is None:
            self._sweep = build_sweep(self.cfg, self.planned, force=self.force, texts=self.texts())
        return self._sweep

    def input(self, ref: str) -> artifacts.Artifact:
        """A job's input model: trained by this process, or found in the (shared) cache."""
        if ref not in self.built:
            step, _, key = ref.rpartition("/")
            art = artifacts.load(step, key)
            if art is None:
                raise artifacts.NotBuiltError(f"{ref} is not in the cache: train it first")
            self.built[ref] = art
        return self.built[ref]

    def build(self, job: Job, *, force: bool = False) -> artifacts.Artifact:
        """Train ``job`` (its inputs cached or built here before), or find it cached."""
        if job.ref in self.built and not force:
            return self.built[job.ref]
        cfg = self.cfg
        scratch = artifacts.scratch_dir(job.step, job.config, list(job.inputs))
        if job.step == ENSEMBLE_STEP:
            from collab_lib import ensemble

            members = [self.input(r) for r in job.inputs]
            produce = partial(ensemble.write, members, job.config["weights"], self.tok)
        elif job.step == FEDERATED_STEP:
            yogi = tuning.best(self.sweep()) if tuned(cfg, job.config["strategy"]) else None
            data = self.texts(job.deduplicated)
            produce = partial(_train_federated, cfg, job, self.base, data, scratch, yogi)
        else:
            prev = self.input(job.inputs[0])
            produce = partial(_train_stage, cfg, job, prev, self.tok, self.data, scratch)
        art = artifacts.build(
            job.step, job.config, produce, list(job.inputs), seed=cfg.seed, force=force
        )
        shutil.rmtree(scratch, ignore_errors=True)
        self.built[job.ref] = art
        return art


def build_models(
    cfg: Config, planned: dict, *, force: bool = False, names: list[str] | None = None
) -> dict[str, artifacts.Artifact]:
    """Train (or find cached) every model of the roster, or those ``names``; shared stages
    train once. ``planned``: the plans of the steps before (the datasets, the canaries)."""
    trainer = Trainer(cfg, planned, force=force)
    chains = jobs(cfg, trainer.base.ref, data_refs(planned), _psi_ref(planned))
    unknown = set(names or ()) - set(chains)
    if unknown:
        raise ConfigError(f"unknown models {sorted(unknown)} (known: {', '.join(chains)})")
    chains = {n: c for n, c in chains.items() if names is None or n in names}
    if any(tuned(cfg, j.config.get("strategy")) for c in chains.values() for j in c):
        trainer.sweep()
    out: dict[str, artifacts.Artifact] = {}
    forced: set[str] = set()  # with force, a shared stage is still retrained only once
    for name, chain in tqdm(chains.items(), desc="models", disable=None):
        for job in chain:
            trainer.build(job, force=force and job.key not in forced)
            forced.add(job.key)
        out[name] = trainer.built[chain[-1].ref]
    return out


def _train_stage(cfg: Config, job: Job, prev, tok, data_for, scratch: Path, dest: Path) -> dict:
    from transformers import GPT2LMHeadModel

    from collab_lib.training import EPOCHS, copy_snapshots, train

    model = GPT2LMHeadModel.from_pretrained(prev.path / "model")
    data = data_for(job.data, job.deduplicated)
    # epoch snapshots go to the scratch directory first, beside the resume checkpoint, so an
    # interrupted job keeps the epochs it finished
    snapshots = scratch / EPOCHS if cfg.train.epoch_checkpoints else None
    dp = privacy.DPSGD(job.dp["noise"], job.dp["clip"], job.dp["batch"]) if job.dp else None
    curves = train(
        model, data, cfg.train, cfg.seed, checkpoint_dir=scratch, snapshot_dir=snapshots, dp=dp
    )
    _save_model(dest, model, tok, curves)
    if snapshots is not None:  # linked: the scratch copy stays until the artifact is whole
        copy_snapshots(snapshots, dest / EPOCHS)
    return {
        "final_loss": curves.epoch_loss[-1],
        "data": list(job.data),
        "sequences": len(data),
        "tokens_per_epoch": data.numel(),
        "optimizer_steps": len(curves.step_loss),
    }


def _train_federated(cfg: Config, job: Job, base, texts, scratch: Path, yogi, dest: Path) -> dict:
    """Run one federated model on Flower's simulation engine (resumes from its last round)."""
    from collab_lib.federated import launch

    app, rc, _ = _prepare(
        cfg, job, texts, base, scratch, dest, yogi=yogi, snapshots=cfg.train.epoch_checkpoints
    )
    launch.simulate(app, rc, artifacts.artifacts_root() / ".flwr")
    curves = json.loads((dest / "curves.json").read_text())
    out = {
        "final_loss": curves["round_loss"][-1],
        "data": list(job.data),
        "rounds": rc["num-rounds"],
    }
    return out | ({"yogi_eta": rc["yogi-eta"], "yogi_tau": rc["yogi-tau"]} if yogi else {})


def _prepare(cfg: Config, job: Job, texts, base, work: Path, out: Path, **options):
    """:func:`collab_lib.federated.launch.prepare` for one federated job: its strategy and its
    organizations' training texts, from the base model."""
    from collab_lib.federated import launch

    data = {o: texts[o] for o in job.data}
    return launch.prepare(
        cfg, job.config["strategy"], data, base.path, work, out, dp=job.dp, **options
    )


def federation(
    cfg: Config,
    planned: dict,
    name: str,
    work: Path,
    *,
    link_port: int = 8000,
    node_ports: list[int] | None = None,
    host: str = "127.0.0.1",
    insecure: bool = False,
) -> tuple[list, dict[str, str], Path]:
    """Set up a deployment-engine run of one federated model in ``work``.

    Returns the processes to start (SuperLink, one ``flwr supernode register`` and one
    SuperNode per organization, ``flwr run``), the environment they need, and where the
    ServerApp will save the model. The SuperLink serves TLS on ``host`` and admits only the
    organizations' SuperNodes (keys and certificates made for the run in ``work/secrets``);
    ``insecure``: in the clear, anyone who reaches the port may join.
    """
    from collab_lib.federated import launch, secure

    if _wildcard(host):  # before anything is built or written
        raise ConfigError(
            f"--host {host!r}: give the SuperLink's address as the organizations reach it (its "
            "certificate names it, and the SuperNodes dial it), not a wildcard"
        )
    chain = jobs(cfg, "", data_refs(planned), _psi_ref(planned)).get(name)
    if not chain or chain[0].step != FEDERATED_STEP:
        known = [s.name for s in roster(cfg) if s.setting == "federated"]
        raise ConfigError(f"{name!r} is not a federated model (one of: {', '.join(known)})")
    texts = training_texts(cfg, planned, deduplicated=chain[0].deduplicated)
    base = build_base_model(cfg)
    work = work.resolve()
    job = chain[0]
    swept = tuned(cfg, job.config["strategy"])
    plain = None if job.deduplicated else texts  # the sweep ran on the plain data
    yogi = tuning.best(build_sweep(cfg, planned, texts=plain)) if swept else None
    app, _, nodes = _prepare(
        cfg, job, texts, base, work, work / "output", yogi=yogi, simulation=False
    )
    home = work / "flwr-home"
    security = None
    if not insecure:
        secrets = work / "secrets"
        orgs = [n.organization for n in nodes]
        made = secure.existing(secrets, host, orgs)  # a second set-up keeps the keys given out
        if made is None:
            tls = secure.write_tls(secrets, host)
            made = tls, {o: secure.write_node_key(secrets, o) for o in orgs}
        security = launch.Security(*made)
    launch.write_connection(home, host, link_port, None if insecure else security.tls.ca)
    procs = launch.deployment(
        app, nodes, host=host, link_port=link_port, node_ports=node_ports, security=security
    )
    return procs, launch.flower_env(home), work / "output"


def _wildcard(host: str) -> bool:
    """Whether ``host`` is an "any address" (0.0.0.0, ::, 0): no machine can dial it."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host.strip() in ("", "0")


# --------------------------------------------------------------------------- reading back


def load(cfg: Config, planned: dict) -> dict[str, artifacts.Artifact]:
    """The profile's models (and ``"base model"``, and the FedYogi sweep when the profile
    tunes it) from the cache, without training."""
    found, missing = {}, []
    for name in model_names(cfg) + ([SWEEP] if cfg.federated.tuned else []):
        art = artifacts.load(*planned[name])
        if art is None:
            missing.append(name)
        else:
            found[name] = art
    if missing:
        raise artifacts.NotBuiltError(
            f"{len(missing)} models of profile {cfg.profile!r} are not trained yet "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): run "
            f"`{cfg.command('run', 'train')}`"
        )
    return found


def chain(art: artifacts.Artifact) -> list[artifacts.Artifact]:
    """The stages of a model, first to last (a federated model is one job)."""
    out = [art]
    while out[0].step == STAGE_STEP:
        step, _, key = out[0].manifest["inputs"][0].rpartition("/")
        if step != STAGE_STEP:
            break
        message = (
            f"{art.ref} starts from stage {key}, which is not in the cache (removed?): "
            "run the train step again to rebuild it"
        )
        out.insert(0, artifacts.require((step, key), message))
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


def all_curves(cfg: Config, models: dict[str, artifacts.Artifact]) -> dict[str, dict]:
    """The loss curves of the study's models (the base model's pretraining left out; the
    ensemble trains nothing)."""
    return {
        spec.name: model_curves(models[spec.name]) | {"setting": spec.setting, "rq": spec.rq}
        for spec in roster(cfg)
        if spec.trains
    }


def models_table(cfg: Config, models: dict[str, artifacts.Artifact]) -> pd.DataFrame:
    """One row per model: how it was trained, the tokens its jobs trained on, its final
    training loss and training time."""
    short = short_letters(cfg)
    rows = []
    for spec in roster(cfg):
        art = models[spec.name]
        jobs_ = chain(art) if spec.trains else []
        rows.append(
            {
                "Model": spec.name,
                "Setting": spec.setting,
                "Data": (" → " if spec.setting == "incremental" else " + ").join(
                    short[o] for o in spec.orgs
                )
                + (f", {PSI_DATA}" if spec.rq == PSI else "")
                + ("" if spec.trains else ", the *_Only models mixed"),
                "Strategy": spec.strategy or "",
                "Jobs": len(jobs_),
                "Tokens trained": sum(_tokens_trained(cfg, j) for j in jobs_),
                "Final training loss": art.metrics["final_loss"],
                "Time (s)": sum(j.manifest["wall_s"] for j in jobs_),
                "DP": "" if spec.privacy is None else f"{spec.privacy[0]}, σ = {spec.privacy[1]:g}",
            }
        )
    return pd.DataFrame(rows)


def _tokens_trained(cfg: Config, job: artifacts.Artifact) -> int:
    """Tokens one job trained on, from its own record: epochs x its data's tokens."""
    if job.step == FEDERATED_STEP:
        examples = json.loads(job.file("curves.json").read_text())["organization_examples"]
        return sum(examples.values()) * cfg.model.context * job.metrics["rounds"]
    return job.metrics["tokens_per_epoch"] * cfg.train.epochs


def yogi_table(cfg: Config, models: dict[str, artifacts.Artifact]) -> pd.DataFrame:
    """The sweep's pairs and held-out perplexities, or the profile's fixed pair."""
    sweep = models.get(SWEEP)
    if sweep is not None:
        return tuning.table(sweep)
    f = cfg.federated
    return pd.DataFrame(
        [{"eta": f"{f.yogi_eta:g}", "tau": f"{f.yogi_tau:g}", "chosen": "fixed by the profile"}]
    )


def sizing_table(cfg: Config, models: dict[str, artifacts.Artifact]) -> pd.DataFrame:
    """Per organization, what its single-organization job trained on (tokens, sequences,
    optimizer steps per epoch, warm-up), and the tokens all unique jobs of the profile train.

    Read from the jobs' own records, so the table describes the models as they were built.
    """
    from collab_lib.training import warmup_steps

    rows = []
    for o in cfg.datasets.organizations:
        m = models[f"{o.name}_Only"].metrics
        rows.append(
            {
                "Organization": o.name,
                "Tokens per epoch": m["tokens_per_epoch"],
                "Sequences": m["sequences"],
                "Steps per epoch": m["optimizer_steps"] // cfg.train.epochs,
                "Warm-up steps": warmup_steps(m["optimizer_steps"], cfg.train),
                "Steps in all": m["optimizer_steps"],
            }
        )
    for row in rows:
        row["Tokens trained"] = row["Tokens per epoch"] * cfg.train.epochs
    tokens = {o["Organization"]: o["Tokens per epoch"] for o in rows}
    rounds = cfg.federated.rounds or cfg.train.epochs
    unique = {}
    for chain_ in jobs(cfg, "", []).values():
        for job in chain_:
            if not job.data:  # the ensemble's job trains nothing
                continue
            times = rounds if job.step == FEDERATED_STEP else cfg.train.epochs
            unique[job.ref] = sum(tokens[org] for org in job.data) * times
    rows.append(
        {
            "Organization": f"all {len(unique)} unique training jobs",
            "Tokens trained": sum(unique.values()),
        }
    )
    if cfg.federated.tuned:  # each pair trains the union's FedYogi model on ~90 % of the data
        kept = 1 - cfg.federated.yogi_sweep.holdout_fraction
        pairs = len(tuning.grid(cfg))
        trained = round(pairs * sum(tokens.values()) * rounds * kept)
        rows.append(
            {"Organization": f"FedYogi sweep ({pairs} runs, about)", "Tokens trained": trained}
        )
    return pd.DataFrame(rows).convert_dtypes()  # counts stay integers beside the empty cells
