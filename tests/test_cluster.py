"""The study on a local Ray cluster: the same artifacts as a run on one machine, bit for bit,
and a worker killed mid-job leaves nothing half-written; the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_org_dir, write_profile

from collab_lib.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
TRAINED = ("base_model", "stage", "federated", "ensemble")
# the per-model pieces of rq1, rq2, curves and membership the cluster's tasks build
PIECES = (
    "perplexity",
    "samples",
    "executions",
    "generations",
    "exposure",
    "duplication",
    "extractable",
    "curve_point",
    "membership_scores",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of this machine: one head with 2 CPUs, stopped at the end (only it). In
    Ray's default place, as a user starts one: a Flower simulation on this machine must still
    start its own Ray rather than join it."""
    ray = Path(sys.executable).with_name("ray")
    port = _free_port()
    head = subprocess.Popen(
        [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=false", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    probe = "import ray, sys; ray.init(address=sys.argv[1]); print(ray.cluster_resources())"
    for _ in range(60):
        done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True)
        if done.returncode == 0:
            break
        time.sleep(1)
    else:
        head.kill()
        pytest.fail("the local Ray head did not start")
    yield address
    os.killpg(head.pid, signal.SIGINT)  # --block stops the processes it started
    try:
        head.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)  # only this head's processes: its own session
        head.wait(20)


@pytest.fixture(scope="module")
def two_orgs(tmp_path_factory) -> Path:
    """Two organizations of local code: base model, two single-organization models, their
    centralized, FedAvg and FedYogi models and both incremental orders (8 jobs)."""
    root = tmp_path_factory.mktemp("orgs")
    orgs = {
        "Microsoft": ("M", [make_org_dir(root / "ms", "azure", 8)], None),
        "Google": ("G", [make_org_dir(root / "google", "tensor", 12)], None),
    }
    return write_profile(
        root / "two.yml",
        orgs,
        canaries={"max_fraction": 0.3},
        federated={"yogi_eta": 0.01, "yogi_tau": 0.001},
    )


def _run(profile: Path, cache: Path, *extra: str, step: str = "train", wait: bool = True):
    env = {**os.environ, "COLLAB_ARTIFACTS": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "collab_lib", "run", step, "--profile", str(profile), *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)


def _trained(cache: Path, steps=TRAINED) -> dict[str, dict]:
    """Every artifact's files (name -> sha256) of ``steps``, by artifact."""
    out = {}
    for step in steps:
        for manifest in (cache / step).glob("*/manifest.json"):
            files = json.loads(manifest.read_text())["files"]
            out[f"{step}/{manifest.parent.name}"] = {k: v["sha256"] for k, v in files.items()}
    return out


def _every_artifact_whole(cache: Path) -> None:
    from collab_lib import artifacts

    for step in TRAINED:
        for d in (cache / step).iterdir() if (cache / step).exists() else ():
            if not d.name.startswith("."):  # a build's temporary directory is hidden
                assert artifacts.load(step, d.name, cache) is not None, d


def _kill_a_training_job(cluster_run: subprocess.Popen, cache: Path) -> None:
    """Wait until a worker trains a stage, then kill -9 it and the process it trains in."""
    import psutil

    for _ in range(600):
        busy = [p for p in (cache / "stage").glob(".tmp-*")] if (cache / "stage").exists() else []
        if busy:
            break
        assert cluster_run.poll() is None, cluster_run.stdout.read()
        time.sleep(0.2)
    else:
        pytest.fail("no stage started training on the cluster")
    workers = [
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if (p.info["environ"] or {}).get("COLLAB_ARTIFACTS") == str(cache)
        and p.pid != cluster_run.pid
    ]
    assert workers, "no worker process of this run found"
    for p in workers:
        p.kill()


def test_cluster_training_is_the_sequential_training_and_survives_kill_9(
    two_orgs, ray_cluster, tmp_path
):
    here, there = tmp_path / "here", tmp_path / "there"
    for cache in (here, there):  # what training reads
        for step in ("datasets", "canaries"):
            assert _run(two_orgs, cache, step=step).returncode == 0
    done = _run(two_orgs, here)  # one machine, one torch thread
    assert done.returncode == 0, done.stdout + done.stderr
    expected = _trained(here)
    assert len(expected) >= 8

    first = _run(two_orgs, there, "--ray-address", ray_cluster, "--ray-cpus", "1", wait=False)
    _kill_a_training_job(first, there)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 2 and "run the same command again" in out, out
    _every_artifact_whole(there)
    assert set(_trained(there)) < set(expected)  # what finished, kept; the killed job not

    again = _run(two_orgs, there, "--ray-address", ray_cluster, "--ray-cpus", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _trained(there) == expected  # the same models, bit for bit

    # every step, each model's pieces of rq1, rq2, curves and membership a task of its own
    assert _run(two_orgs, here, step="all").returncode == 0
    done = _run(two_orgs, there, "--ray-address", ray_cluster, step="all")
    assert done.returncode == 0, done.stdout + done.stderr
    pieces = _trained(here, PIECES)
    assert {ref.split("/")[0] for ref in pieces} == set(PIECES)
    assert _trained(there, PIECES) == pieces


def test_a_cluster_that_is_not_there_is_a_clear_error(two_orgs, tmp_path):
    done = _run(two_orgs, tmp_path, "--ray-address", f"127.0.0.1:{_free_port()}")
    assert done.returncode == 2 and "no Ray cluster at" in done.stderr, done.stderr
