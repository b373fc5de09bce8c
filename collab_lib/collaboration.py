"""The collaborative models of the paper (§2.3, §4.1-4.2), names exactly as the paper's.

Every model is a chain of training stages from the base model: a stage trains E epochs on
one organization's training split (``Facebook_Only``; each stage of ``Incremental_F2M2G``)
or on the shuffled union of several (``Centralized_FMG``). A stage's cache key depends only
on its data, its settings and the stage it starts from, so shared prefixes are trained once:
the first stage of ``Incremental_F2M2G`` and of ``Incremental_F2G2M`` *is* ``Facebook_Only``.

Federated models (``Federated_Avg_*``, ``Federated_Yogi_*``, with Flower) are listed but not
trained yet: issue 4 is in progress.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from collab_lib import artifacts, datasets
from collab_lib.config import Config
from collab_lib.model import build_tokenizer, init_model, load_tokenizer, stdlib_texts
from collab_lib.training import pack, train

BASE_STEP = "base_model"
STAGE_STEP = "stage"
STEP = "train"
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


def _stage_config(cfg: Config, data: tuple[str, ...]) -> dict:
    return {"data": list(data), "train": cfg.train, "model": cfg.model, "seed": cfg.seed}


def plan(cfg: Config) -> dict[str, tuple[str, str]]:
    """The artifacts of the base model and of every stage, keyed without training anything."""
    ds_ref = "{}/{}".format(*datasets.plan(cfg)["datasets"])
    base = (BASE_STEP, artifacts.artifact_key(BASE_STEP, _base_config(cfg), []))
    out = {"base model": base}
    for spec in paper_models():
        if spec.setting == "federated":
            continue
        prev = "{}/{}".format(*base)
        for data in _stages(spec):
            key = artifacts.artifact_key(STAGE_STEP, _stage_config(cfg, data), [prev, ds_ref])
            prev = f"{STAGE_STEP}/{key}"
        out[spec.name] = (STAGE_STEP, key)
    return out


def _base_config(cfg: Config) -> dict:
    return {"model": cfg.model, "train": cfg.train, "seed": cfg.seed}


def build_base_model(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """GPT-2 at the profile's size, pretrained on the standard library (never on org code)."""
    tok_art = build_tokenizer(cfg)

    def produce(out: Path) -> dict:
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

    return artifacts.build(BASE_STEP, _base_config(cfg), produce, [], seed=cfg.seed, force=force)


def _save_model(out: Path, model, tok, curves) -> None:
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    (out / "curves.json").write_text(json.dumps(curves.__dict__))


def build_models(cfg: Config, *, force: bool = False) -> dict[str, artifacts.Artifact]:
    """Train (or find cached) every non-federated model; shared stages are trained once."""
    from transformers import GPT2LMHeadModel

    ds = datasets.datasets_for(cfg)
    base = build_base_model(cfg, force=force)
    tok = load_tokenizer(base.path / "model")
    packed: dict[str, object] = {}

    def data_for(orgs: tuple[str, ...]):
        import torch

        for o in orgs:
            if o not in packed:
                texts = [d["content"] for d in ds.documents(o, "train")]
                packed[o] = pack(texts, tok, cfg.model.context)
        return torch.cat([packed[o] for o in orgs])

    out: dict[str, artifacts.Artifact] = {}
    forced: set[str] = set()  # with force, a shared stage is still retrained only once
    for spec in paper_models():
        if spec.setting == "federated":
            continue
        prev = base
        for data in _stages(spec):
            inputs = [prev.ref, ds.artifact.ref]
            scratch = artifacts.scratch_dir(STAGE_STEP, _stage_config(cfg, data), inputs)

            def produce(dest: Path, prev=prev, data=data, scratch=scratch) -> dict:
                model = GPT2LMHeadModel.from_pretrained(prev.path / "model")
                curves = train(model, data_for(data), cfg.train, cfg.seed, checkpoint_dir=scratch)
                _save_model(dest, model, tok, curves)
                return {"final_loss": curves.epoch_loss[-1], "data": list(data)}

            key = artifacts.artifact_key(STAGE_STEP, _stage_config(cfg, data), inputs)
            prev = artifacts.build(
                STAGE_STEP,
                _stage_config(cfg, data),
                produce,
                inputs,
                seed=cfg.seed,
                force=force and key not in forced,
            )
            forced.add(key)
            shutil.rmtree(scratch, ignore_errors=True)
        out[spec.name] = prev
    return out
