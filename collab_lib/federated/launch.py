"""Start the federated apps: Flower's simulation engine here, or the deployment engine.

Both engines run the same ``ClientApp`` and ``ServerApp``; what differs is how a client finds
its organization's data. Everything a run needs is in one Flower app directory (a
``pyproject.toml`` written here; ``flwr new`` would need the internet), so the deployment
engine's ``flwr run`` and the simulation below read the same settings.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from collab_lib.config import Config
from collab_lib.federated.secure import Tls


@dataclass(frozen=True)
class NodeData:
    organization: str
    data_path: Path  # JSONL of the organization's training documents


def prepare(
    cfg: Config,
    strategy: str,
    texts: dict[str, list[str]],
    base: Path,
    work: Path,
    out: Path,
    *,
    yogi: tuple[float, float] | None = None,
    simulation: bool = True,
    snapshots: bool = False,
    dp: dict | None = None,
) -> tuple[Path, dict, list[NodeData]]:
    """Everything one federated run needs in ``work``: each organization's training
    documents where its client reads them (``texts``, in the order of the profile), the run
    config and the Flower app. Returns the app directory, the run config and the nodes.
    ``snapshots``: the ServerApp also saves the global model after every round
    (``out/epochs/<round>``). ``dp``: ``{"level", "noise", "clip"}`` of a DP run
    (:mod:`collab_lib.privacy`): example-level DP-SGD in every client, or organization-level
    DP on the server.
    """
    from collab_lib.federated import task

    nodes = []
    for org, docs in texts.items():
        path = work / "nodes" / f"{org}.jsonl"
        if not path.exists():  # written once: a resumed run reads the same file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(task.record(t)) + "\n" for t in docs)
            tmp.replace(path)
        nodes.append(NodeData(org, path))
    rc = run_config(
        cfg,
        strategy,
        nodes,
        base,
        out,
        work / "rounds",
        yogi=yogi,
        simulation=simulation,
        snapshots=snapshots,
        dp=dp,
    )
    return write_app(work / "app", rc), rc, nodes


def run_config(
    cfg: Config,
    strategy: str,
    nodes: list[NodeData],
    base: Path,
    out: Path,
    ckpt: Path,
    *,
    yogi: tuple[float, float] | None = None,
    simulation: bool = True,
    snapshots: bool = False,
    dp: dict | None = None,
) -> dict:
    """The run's settings, [tool.flwr.app.config] of the app; paths absolute (the ServerApp
    may run from an installed copy). Only a simulation maps nodes to data: on the deployment
    engine each SuperNode names its own, and the run config names none. ``yogi``: FedYogi's
    server rate and tau, when not the profile's own (a tuned or a swept pair)."""
    from collab_lib.federated import task

    fed, tr = cfg.federated, cfg.train
    yogi = yogi or (fed.yogi_eta, fed.yogi_tau)
    if strategy == "FedYogi" and None in yogi:
        raise ValueError("FedYogi needs its server rate and tau (the profile's or the sweep's)")
    rc = {
        "strategy": strategy,
        "num-rounds": fed.rounds or tr.epochs,
        "num-nodes": len(nodes),
        "base-model": str(base.resolve()),
        "out-dir": str(out.resolve()),
        "checkpoint-dir": str(ckpt.resolve()),
        "simulation-nodes": json.dumps(
            [
                {"organization": n.organization, "data-path": str(n.data_path.resolve())}
                for n in nodes
                if simulation
            ]
        ),
        "seed": cfg.seed,
        "context": cfg.model.context,
        "snapshots": snapshots,  # the ServerApp keeps the global model after every round
        **task.to_run_config(tr),
    }
    if dp is not None:
        rc |= {"dp-level": dp["level"], "dp-noise": dp["noise"], "dp-clip": dp["clip"]}
        rc |= {"dp-batch": dp["batch"]} if "batch" in dp else {}
    if strategy == "FedYogi":
        rc |= {
            "yogi-eta": yogi[0],
            "yogi-beta-1": fed.yogi_beta_1,
            "yogi-beta-2": fed.yogi_beta_2,
            "yogi-tau": yogi[1],
        }
    return rc


def write_app(app_dir: Path, rc: dict) -> Path:
    """A Flower app directory whose components are this package's apps."""
    app_dir.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml(v)}" for k, v in rc.items())
    (app_dir / "pyproject.toml").write_text(
        f"""[project]
name = "collab-federated"
version = "1.0.0"
description = "Federated training of the collab_lib models (written by collab_lib)"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "collab-lib"

[tool.flwr.app.components]
serverapp = "collab_lib.federated.server_app:app"
clientapp = "collab_lib.federated.client_app:app"

[tool.flwr.app.config]
{config}
""",
        encoding="utf-8",
    )
    return app_dir


def _toml(value) -> str:
    if isinstance(value, bool):  # TOML's true and false, not Python's True and False
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower's processes: its state inside ``home``, no installs at run time.

    Without ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION`` a SuperLink would ``uv sync``
    the app's dependencies (and download a CUDA build of torch).
    """
    home.mkdir(parents=True, exist_ok=True)
    return {
        "FLWR_HOME": str(home.resolve()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }


def simulate(app_dir: Path, rc: dict, home: Path) -> None:
    """Run the apps on Flower's simulation engine (Ray): one virtual node per organization.

    Each virtual client gets every CPU core, so clients train one after another, each as
    fast as the machine allows, and the result does not depend on how Ray schedules them.
    """
    os.environ.update(flower_env(home))
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from collab_lib.federated import client_app, server_app

    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    cpus = os.cpu_count() or 1
    _run_simulation(
        num_supernodes=int(rc["num-nodes"]),
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app.app,
        server_app=server_app.app,
        backend_config={
            "client_resources": {"num_cpus": cpus, "num_gpus": 1.0 if _cuda() else 0.0},
            # its own Ray, even on a machine of a Ray cluster (Ray would join that cluster)
            "init_args": {"address": "local", "num_cpus": cpus, "include_dashboard": False},
        },
        server_app_context=context,
        app_dir=str(app_dir),  # the virtual clients read the run config from its pyproject
        is_app=True,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Process:
    """One process of a deployment-engine run: its name and its command line."""

    name: str
    argv: list[str]

    def shell(self, env: dict[str, str]) -> str:
        return " ".join(
            [*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, self.argv)]
        )


@dataclass(frozen=True)
class Security:
    """What keeps outsiders out: the SuperLink's TLS files and each organization's SuperNode
    key pair (private key, public key), from :mod:`collab_lib.federated.secure`."""

    tls: Tls
    keys: dict[str, tuple[Path, Path]]


def deployment(
    app_dir: Path,
    nodes: list[NodeData],
    *,
    host: str = "127.0.0.1",
    link_port: int = 8000,
    node_ports: list[int] | None = None,
    security: Security | None = None,
) -> list[Process]:
    """The processes of a deployment-engine run (README: "Across machines").

    One SuperLink (its one port, ``link_port``, Flower's default 8000, serves the SuperNodes,
    ``flwr`` and its own SuperExec); with ``security``, over TLS and admitting only the
    registered SuperNodes: then one ``flwr supernode register`` per organization, run once the
    SuperLink listens. One SuperNode per organization, each pointing only at its own data,
    with its own key and its own ``--port`` (two on one host would clash otherwise); then
    ``flwr run`` submits the app to the SuperLink named in ``FLWR_HOME/config.toml``. Without
    ``security`` (``federation --insecure``) everything runs in the clear and any process that
    reaches the port can join.
    """
    node_ports = node_ports or [9200 + i for i in range(len(nodes))]
    if security is None:
        link_security, node_security = (
            ["--insecure"],
            {n.organization: ["--insecure"] for n in nodes},
        )
    else:
        t = security.tls
        link_security = [
            "--ssl-ca-certfile",
            str(t.ca),
            "--ssl-certfile",
            str(t.cert),
            "--ssl-keyfile",
            str(t.key),
            "--enable-supernode-auth",
        ]
        node_security = {
            n.organization: [
                "--root-certificates",
                str(t.ca),
                "--auth-supernode-private-key",
                str(security.keys[n.organization][0]),
            ]
            for n in nodes
        }
    procs = [
        Process(
            "superlink",
            [
                "flower-superlink",
                *link_security,
                "--host",
                host,
                "--port",
                str(link_port),
                "--disable-runtime-dependency-installation",
            ],
        )
    ]
    if security is not None:
        procs += [
            Process(
                f"register-{n.organization}",
                [
                    "flwr",
                    "supernode",
                    "register",
                    str(security.keys[n.organization][1]),
                    "deployment",
                ],
            )
            for n in nodes
        ]
    for i, n in enumerate(nodes):
        data = json.dumps(str(n.data_path.resolve()))
        node_config = f"organization={json.dumps(n.organization)} data-path={data}"
        procs.append(
            Process(
                f"supernode-{n.organization}",
                [
                    "flower-supernode",
                    *node_security[n.organization],
                    "--superlink",
                    address(host, link_port),
                    "--port",
                    str(node_ports[i]),
                    "--node-config",
                    node_config,
                ],
            )
        )
    procs.append(
        Process("flwr-run", ["flwr", "run", str(app_dir.resolve()), "deployment", "--stream"])
    )
    return procs


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def write_connection(
    home: Path, host: str = "127.0.0.1", port: int = 8000, ca: Path | None = None
) -> Path:
    """``FLWR_HOME/config.toml`` naming the SuperLink that ``flwr run ... deployment`` and
    ``flwr supernode register`` use: over TLS, trusting ``ca`` (an absolute path, as Flower
    requires), or in the clear without one."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    trust = f'root-certificates = "{ca.resolve()}"\n' if ca else "insecure = true\n"
    path.write_text(
        f'[superlink]\ndefault = "deployment"\n\n[superlink.deployment]\n'
        f'address = "{address(host, port)}"\n{trust}'
    )
    return path
