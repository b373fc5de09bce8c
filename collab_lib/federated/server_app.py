"""The ServerApp: Flower's FedAvg or FedYogi over the organizations' replies.

Two additions to Flower's strategies, both small: replies are sorted by organization before
they are aggregated (a floating-point sum depends on its order, and replies arrive in any
order), and after every round the global weights, the server optimizer's state and the
curves are checkpointed, so an interrupted run resumes at the round it reached and ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedYogi

from collab_lib.federated import task
from collab_lib.privacy import EXAMPLE, ORGANIZATION

app = ServerApp()
CHECKPOINT = "round.npz"
DP_KEYS = ("dp-noise", "dp-clip", "dp-batch")  # what a client needs to run DP-SGD


class _Rounds:
    """Mixed into a Flower strategy: per-round client rate, sorted replies, checkpoints."""

    def setup(self, run_config: dict, checkpoint_dir: Path, model=None) -> None:
        self.rc = run_config
        self.checkpoint_dir = checkpoint_dir
        self.model = model  # given: the global weights are also saved after every round
        self.done = 0  # rounds finished before this start (on resume)
        self.curves: dict = {
            "round_loss": [],
            "organization_loss": {},
            "organization_lr": {},
            "organization_examples": {},
        }

    def start(self, grid: Grid, *args, **kwargs):
        """Flower's rounds, on the organizations' nodes only (:class:`OrganizationsOnly`)."""
        return super().start(OrganizationsOnly(grid, int(self.rc["num-nodes"])), *args, **kwargs)

    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid: Grid):
        """Each round's message names the round: a client places it on its own schedule."""
        r = self.done + server_round
        config["round"] = r
        config["seed"] = int(self.rc["seed"]) * 10_007 + r
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        replies = sorted(replies, key=_organization)
        for msg in replies:
            if not msg.has_error():
                org = _organization(msg)
                metrics = msg.content["metrics"]
                loss = float(metrics["train-loss"])
                self.curves["organization_loss"].setdefault(org, []).append(loss)
                lrs = [float(metrics["lr-first"]), float(metrics["lr-last"])]
                self.curves["organization_lr"].setdefault(org, []).append(lrs)
                self.curves["organization_examples"][org] = int(metrics["num-examples"])
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            raise RuntimeError(f"round {self.done + server_round}: no client replied with weights")
        self.curves["round_loss"].append(float(metrics["train-loss"]))
        self._checkpoint(self.done + server_round, arrays)
        return arrays, metrics

    def _checkpoint(self, rnd: int, arrays: ArrayRecord) -> None:
        """One file per round, replaced atomically: weights, optimizer state and curves agree.
        The round's snapshot (``epochs/<round>``) is written first: a run stopped between the
        two repeats the round and writes the same snapshot again."""
        if self.model is not None:
            from collab_lib.training import EPOCHS, save_snapshot

            task.set_arrays(self.model, arrays)
            save_snapshot(self.model, self.checkpoint_dir / EPOCHS / str(rnd))
        state = {f"w/{k}": v.numpy() for k, v in arrays.items()}
        for name in ("m_t", "v_t"):
            for k, v in (getattr(self, name, None) or {}).items():
                state[f"{name}/{k}"] = v
        state["curves"] = np.array(json.dumps(self.curves | {"round": rnd}))
        tmp = self.checkpoint_dir / f"{CHECKPOINT}.tmp{os.getpid()}.npz"
        np.savez(tmp, **state)
        os.replace(tmp, self.checkpoint_dir / CHECKPOINT)

    def resume(self) -> ArrayRecord | None:
        """The weights of the last finished round, with the optimizer state; None if none."""
        path = self.checkpoint_dir / CHECKPOINT
        if not path.exists():
            return None
        parts: dict[str, dict] = {name: {} for name in ("w", "m_t", "v_t")}
        with np.load(path) as z:
            curves = json.loads(str(z["curves"]))
            for key in z.files:
                name, _, k = key.partition("/")
                if name in parts:
                    parts[name][k] = z[key]
        self.done = curves.pop("round")
        self.curves = curves
        for name in ("m_t", "v_t"):
            if parts[name]:
                setattr(self, name, parts[name])
        return ArrayRecord({k: Array(v) for k, v in parts["w"].items()})


class OrderedFedAvg(_Rounds, FedAvg):
    """Flower's FedAvg, replies in organization order."""


class OrderedFedYogi(_Rounds, FedYogi):
    """Flower's FedYogi (Reddi et al.'s defaults unless configured), replies in order."""


class OrderedDPFedAvg(_Rounds, DifferentialPrivacyServerSideFixedClipping):
    """Organization-level DP: Flower's server-side fixed-clipping wrapper around FedAvg.

    Each organization's update is clipped to ``dp-clip`` and Gaussian noise of standard
    deviation ``dp-noise x dp-clip / organizations`` is added to their average, every round.
    The average is unweighted (``unit-weight``): the noise is sized for one organization's
    share 1 / n of it, which weighting by examples would break. Flower draws the noise from
    NumPy's global generator, seeded here per round, so a resumed run gets the same noise.
    """

    def aggregate_train(self, server_round: int, replies):
        np.random.seed(int(self.rc["seed"]) * 10_007 + self.done + server_round)
        return super().aggregate_train(server_round, replies)


class OrganizationsOnly:
    """The grid as the strategy sees it: the organizations' nodes, or the run stops.

    Flower 1.42's open-source SuperLink does not authenticate its Control API (account login
    is not part of it): whoever reaches its port can register a SuperNode key of their own
    and join. So a node beyond the organizations' count stops the run before a round sends
    anyone a model or takes an update: the strategies choose their nodes from
    ``get_node_ids`` (and talk to them through ``send_and_receive`` only).
    """

    def __init__(self, grid: Grid, organizations: int) -> None:
        self._grid, self._organizations = grid, organizations

    def get_node_ids(self):
        ids = list(self._grid.get_node_ids())
        if len(ids) > self._organizations:
            raise RuntimeError(
                f"{len(ids)} SuperNodes are connected where {self._organizations} "
                f"organizations take part (node ids {sorted(ids)}): a node nobody expected "
                "joined, so no round starts. Stop the SuperLink, check who registered keys "
                "(`flwr supernode ls`), and restrict its port to the organizations"
            )
        return ids

    def send_and_receive(self, *args, **kwargs):
        return self._grid.send_and_receive(*args, **kwargs)


def _organization(msg: Message) -> str:
    return str(msg.content["client"]["organization"]) if not msg.has_error() else ""


def make_strategy(rc: dict) -> _Rounds:
    """The configured strategy; every node trains each round, no federated evaluation."""
    common = {
        "fraction_evaluate": 0.0,
        "min_train_nodes": int(rc["num-nodes"]),
        "min_available_nodes": int(rc["num-nodes"]),
    }
    if rc.get("dp-level") == ORGANIZATION and rc["strategy"] != "FedAvg":
        raise ValueError("organization-level DP wraps FedAvg only (Flower's fixed clipping)")
    if rc["strategy"] == "FedAvg" and rc.get("dp-level") == ORGANIZATION:
        inner = FedAvg(**common, weighted_by_key="unit-weight")
        noise, clip, n = float(rc["dp-noise"]), float(rc["dp-clip"]), int(rc["num-nodes"])
        return OrderedDPFedAvg(inner, noise, clip, n)
    if rc["strategy"] == "FedAvg":
        return OrderedFedAvg(**common)
    if rc["strategy"] == "FedYogi":
        return OrderedFedYogi(
            **common,
            eta=float(rc["yogi-eta"]),
            eta_l=float(rc["lr"]),  # recorded only: Flower's FedOpt does not apply it
            beta_1=float(rc["yogi-beta-1"]),
            beta_2=float(rc["yogi-beta-2"]),
            tau=float(rc["yogi-tau"]),
        )
    raise ValueError(f"unknown strategy {rc['strategy']!r} (FedAvg or FedYogi)")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the remaining rounds, then save the global model where the run config says."""
    rc = dict(context.run_config)
    out, ckpt = Path(str(rc["out-dir"])), Path(str(rc["checkpoint-dir"]))
    ckpt.mkdir(parents=True, exist_ok=True)
    strategy = make_strategy(rc)
    model = task.load_model(str(rc["base-model"]))
    snapshots = bool(rc["snapshots"])
    strategy.setup(rc, ckpt, model if snapshots else None)  # its final weights are set below
    arrays = strategy.resume()
    if arrays is None:
        arrays = task.to_arrays(model)
    remaining = int(rc["num-rounds"]) - strategy.done
    if remaining > 0:
        train_config = ConfigRecord(
            {"context": int(rc["context"]), "num-rounds": int(rc["num-rounds"])}
            | {key: rc[key] for key in task.TRAIN_KEYS}  # as the run config holds them
            | ({k: rc[k] for k in DP_KEYS} if rc.get("dp-level") == EXAMPLE else {})
        )
        result = strategy.start(grid, arrays, num_rounds=remaining, train_config=train_config)
        arrays = result.arrays
    task.set_arrays(model, arrays)
    save_global(model, str(rc["base-model"]), out, strategy.curves)
    if snapshots:
        from collab_lib.training import EPOCHS, copy_snapshots

        shutil.rmtree(out / EPOCHS, ignore_errors=True)
        copy_snapshots(ckpt / EPOCHS, out / EPOCHS)


def save_global(model, base_model: str, out: Path, curves: dict) -> None:
    from collab_lib.model import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    load_tokenizer(Path(base_model) / "model").save_pretrained(out / "model")
    (out / "curves.json").write_text(json.dumps(curves))
