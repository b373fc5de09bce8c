"""Federated training with Flower: what leaves a client, and that both engines agree.

The simulation engine (Ray) and the deployment engine (a SuperLink and one SuperNode per
organization, as separate processes on 127.0.0.1) run the same apps; on CPU they give
bit-identical weights, and a run stopped after a round resumes to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_org_dir, run_through, write_profile
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from safetensors.numpy import load_file

from collab_lib import collaboration, pipeline
from collab_lib.config import TrainConfig, load_config
from collab_lib.federated import client_app, launch, server_app, task
from collab_lib.training import lr_factor, steps_per_epoch

FEDERATED = "Federated_Yogi_FMG"


@pytest.fixture(scope="module")
def fed_profile(tmp_path_factory) -> Path:
    """Three small organizations, a tiny model and two FedYogi rounds."""
    root = tmp_path_factory.mktemp("fed")
    orgs = {
        "Facebook": ("F", [make_org_dir(root / "fb", "torch", 4)], None),
        "Microsoft": ("M", [make_org_dir(root / "ms", "azure", 8)], None),
        "Google": ("G", [make_org_dir(root / "google", "tensor", 12)], None),
    }
    return write_profile(root / "fed.yml", orgs, federated={"rounds": 2})


@pytest.fixture(scope="module")
def simulated(fed_profile, tmp_path_factory):
    """The federated model trained on the simulation engine, with its artifact cache."""
    root = tmp_path_factory.mktemp("fed-artifacts")
    old = os.environ.get("COLLAB_ARTIFACTS")
    os.environ["COLLAB_ARTIFACTS"] = str(root)
    cfg = load_config(fed_profile)
    run_through("canaries", cfg)  # the data every training job reads
    art = collaboration.build_models(cfg, pipeline.planned_for("train", cfg), names=[FEDERATED])[
        FEDERATED
    ]
    yield cfg, art, root
    if old is not None:
        os.environ["COLLAB_ARTIFACTS"] = old


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(model_dir / "model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_a_client_sends_only_weights_and_counts(simulated, tmp_path, monkeypatch):
    cfg, art, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    base = collaboration.build_base_model(cfg).path
    texts = collaboration.training_texts(cfg, pipeline.planned_for("train", cfg))["Microsoft"]
    data = tmp_path / "Microsoft.jsonl"
    data.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))

    model = task.load_model(base)
    train = TrainConfig(batch_size=4, lr=1e-3)
    config = ConfigRecord(
        {"context": cfg.model.context, "seed": 1, "round": 1, "num-rounds": 2}
        | task.to_run_config(train)
    )
    msg = Message(
        content=RecordDict({"arrays": task.to_arrays(model), "config": config}),
        message_type=MessageType.TRAIN,
        dst_node_id=7,
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"organization": "Microsoft", "data-path": str(data)},
        state=RecordDict(),
        run_config={"base-model": str(base)},
    )
    reply = client_app.app(msg, context)

    content = reply.content
    assert set(content.array_records) == {"arrays"}
    assert set(content.metric_records) == {"metrics"}
    assert set(content.config_records) == {"client"}
    # weights: exactly the model's float tensors (the tied output layer left out), changed
    sent = content["arrays"]
    expected = {k: v for k, v in model.state_dict().items() if k != task.TIED}
    assert set(sent.keys()) == set(expected)
    for k, arr in sent.items():
        a = arr.numpy()
        assert a.dtype == np.float32 and a.shape == tuple(expected[k].shape)
    assert not np.array_equal(
        sent["transformer.wte.weight"].numpy(), expected["transformer.wte.weight"].numpy()
    )
    # counts and a loss, and the client's name: nothing else, and no text or token ids
    tokens = task.packed_data(str(data), str(base), cfg.model.context)
    assert dict(content["metrics"]).keys() == {
        "num-examples",
        "train-loss",
        "lr-first",
        "lr-last",
        "unit-weight",
    }
    assert content["metrics"]["num-examples"] == len(tokens)
    assert dict(content["client"]) == {"organization": "Microsoft"}
    payload = b"".join(arr.data for arr in sent.values())
    assert texts[0][:40].encode() not in payload
    assert tokens[0, :16].numpy().astype(np.int64).tobytes() not in payload


def test_federated_model_is_saved_with_curves(simulated):
    cfg, art, _ = simulated
    curves = json.loads(art.file("curves.json").read_text())
    assert len(curves["round_loss"]) == 2  # federated.rounds
    assert set(curves["organization_loss"]) == {"Facebook", "Microsoft", "Google"}
    # each client follows the schedule its data would get alone over as many epochs: warm-up
    # in round 1 only, and round 2 continues where round 1 ended
    train = cfg.train
    for org, (first, second) in curves["organization_lr"].items():
        steps = steps_per_epoch(curves["organization_examples"][org], train)
        expected = [train.lr * lr_factor(s, 2 * steps, train) for s in (0, steps - 1, steps)]
        assert [first[0], first[1], second[0]] == pytest.approx(expected), org
        assert second[0] > second[1], org
    assert (art.path / "model" / "tokenizer.json").exists()


def test_one_fedavg_round_is_the_example_weighted_mean(simulated, tmp_path, monkeypatch):
    """Flower's FedAvg over two clients: their weights averaged by ``num-examples``, which
    counts training sequences (not batches, which would over-weight a small organization)."""
    cfg, _, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    base = collaboration.build_base_model(cfg).path
    texts = collaboration.training_texts(cfg, pipeline.planned_for("train", cfg))
    pair = {org: texts[org] for org in ("Microsoft", "Google")}
    app, rc, nodes = launch.prepare(cfg, "FedAvg", pair, base, tmp_path, tmp_path / "out")
    rc = rc | {"num-rounds": 1}
    launch.simulate(app, rc, root / ".flwr")

    round_1 = {
        "context": cfg.model.context,
        "num-rounds": 1,
        "round": 1,
        "seed": cfg.seed * 10_007 + 1,
    }
    config = ConfigRecord(round_1 | task.to_run_config(cfg.train))
    weights, counts = [], []
    replies = _client_replies(rc, nodes, base, config)
    for node, reply in zip(nodes, replies, strict=True):  # each client's, computed here
        n = reply["metrics"]["num-examples"]
        sequences = len(task.packed_data(str(node.data_path), str(base), cfg.model.context))
        assert n == sequences and n > steps_per_epoch(n, cfg.train)  # examples, not batches
        weights.append(_numpy(reply))
        counts.append(n)
    assert counts[0] != counts[1]  # unequal clients: a plain mean would differ
    total = sum(counts)
    got = _weights(tmp_path / "out" / "model")
    for k in weights[0]:
        mean = sum(c * w[k] for c, w in zip(counts, weights, strict=True)) / total
        assert np.allclose(got[k], mean, rtol=1e-5, atol=1e-6), k
    plain = (weights[0][k] + weights[1][k]) / 2  # what a count-blind average would give
    assert not np.allclose(got[k], plain, rtol=1e-5, atol=1e-6)


def test_training_settings_cross_to_the_clients_unchanged():
    """The run config's hyphenated keys read back into the same TrainConfig (one place)."""
    train = TrainConfig(
        epochs=4,
        batch_size=3,
        grad_accum=2,
        lr=7e-4,
        weight_decay=0.05,
        warmup_fraction=0.2,
        schedule="linear",
        grad_clip=0.5,
    )
    record = ConfigRecord(task.to_run_config(train))
    assert "warmup-fraction" in record and task.train_config(record) == train
    assert task.train_config(record, epochs=1) == TrainConfig(**{**train.__dict__, "epochs": 1})


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_resume_after_a_stopped_round_gives_the_same_weights(simulated, tmp_path, monkeypatch):
    cfg, art, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    base = collaboration.build_base_model(cfg).path
    texts = collaboration.training_texts(cfg, pipeline.planned_for("train", cfg))
    out = tmp_path / "out"
    app, rc, _ = launch.prepare(cfg, "FedYogi", texts, base, tmp_path, out, snapshots=True)
    save = server_app._Rounds._checkpoint

    def stop_after_round_1(self, rnd, arrays):  # the run dies once round 1 is checkpointed
        save(self, rnd, arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(server_app._Rounds, "_checkpoint", stop_after_round_1)
    with contextlib.suppress(BaseException):
        launch.simulate(app, rc, root / ".flwr")
    monkeypatch.setattr(server_app._Rounds, "_checkpoint", save)
    assert not (tmp_path / "out" / "model").exists()
    with np.load(tmp_path / "rounds" / "round.npz") as ckpt:  # the round's checkpoint
        assert (
            json.loads(str(ckpt["curves"]))["round"] == 1 and "v_t/transformer.wte.weight" in ckpt
        )
    assert sorted(p.name for p in (tmp_path / "rounds" / "epochs").iterdir()) == ["1"]
    launch.simulate(app, rc, root / ".flwr")  # the rerun resumes at round 2
    _assert_same(_weights(out / "model"), _weights(art.path / "model"))
    # every round's global model, loadable on its own; the last is the model
    rounds = [str(r) for r in range(1, int(rc["num-rounds"]) + 1)]
    assert sorted(p.name for p in (out / "epochs").iterdir()) == rounds
    assert sorted(p.name for p in (art.path / "epochs").iterdir()) == rounds  # the pipeline's
    _assert_same(_weights(out / "epochs" / rounds[-1]), _weights(out / "model"))
    _assert_same(_weights(out / "epochs" / "1"), _weights(art.path / "epochs" / "1"))


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _with(argv: list[str], flag: str, value: str | None) -> list[str]:
    """``argv`` with ``flag``'s value replaced, or the flag and its value removed (None)."""
    i = argv.index(flag)
    return argv[:i] + ([flag, value] if value is not None else []) + argv[i + 2 :]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    import socket

    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None,
    reason="Flower's executables are not installed",
)
def test_deployment_engine_gives_the_simulations_weights(simulated, tmp_path, monkeypatch):
    """The secure deployment (TLS, registered SuperNodes only) gives the simulation's
    weights bit for bit; a SuperNode whose key is not registered is refused, one without TLS
    cannot connect, and neither disturbs the run."""
    from collab_lib.federated import secure

    cfg, art, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    link, *nodes = _free_ports(6)
    procs, env, out = collaboration.federation(
        cfg,
        pipeline.planned_for("train", cfg),
        FEDERATED,
        tmp_path / "deploy",
        link_port=link,
        node_ports=nodes[:3],
    )
    superlink = procs[0].argv
    assert "--insecure" not in superlink and "--enable-supernode-auth" in superlink
    assert "insecure" not in (tmp_path / "deploy" / "flwr-home" / "config.toml").read_text()
    assert oct((tmp_path / "deploy" / "secrets" / "superlink.key").stat().st_mode)[-3:] == "600"
    env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    supernodes = [p for p in procs if p.name.startswith("supernode-")]
    rogue_key, _ = secure.write_node_key(tmp_path / "rogue", "Rogue")  # never registered
    rogue = _with(supernodes[0].argv, "--auth-supernode-private-key", str(rogue_key))
    rogue = _with(rogue, "--port", str(nodes[3]))
    plain = _with(supernodes[0].argv, "--port", str(nodes[4]))
    plain = _with(plain, "--root-certificates", None)
    plain = _with(plain, "--auth-supernode-private-key", None)
    plain = [plain[0], "--insecure", "--max-retries", "1", *plain[1:]]
    running: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (the process keeps it)
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        running.append(proc)
        return proc

    try:
        for p in procs[:-1]:  # the SuperLink, each key's registration, then the SuperNodes
            if p.name.startswith("register-"):
                reg = subprocess.run(p.argv, env=env, capture_output=True, text=True, timeout=120)
                assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
                continue
            start(p.name, p.argv)
            if p.name == "superlink":
                _wait_for_port(link)
        intruders = [start("rogue", rogue), start("no-tls", plain)]
        run = subprocess.run(procs[-1].argv, env=env, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        for proc in intruders:  # refused: they end on their own (the run takes far longer)
            proc.wait(timeout=60)
        for _ in range(100):  # --stream returns when the run ends; the model is saved by then
            if (out / "model" / "model.safetensors").exists():
                break
            time.sleep(0.5)
    finally:
        for proc in running:  # SuperNodes start SuperExec children: stop the whole group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in running:
            proc.wait(timeout=30)
    _assert_same(_weights(out / "model"), _weights(art.path / "model"))
    for proc, name, said in (
        (intruders[0], "rogue", "Failed to activate SuperNode"),
        (intruders[1], "no-tls", "Giving up"),
    ):
        assert proc.returncode > 0, name  # it ended on its own, with an error
        assert said in (tmp_path / f"{name}.log").read_text(), name
    app_config = (tmp_path / "deploy" / "app" / "pyproject.toml").read_text()
    assert "nodes/" not in app_config  # each SuperNode names its own data, the app none
    assert json.loads((out / "curves.json").read_text()) == json.loads(
        art.file("curves.json").read_text()
    )


def test_federation_command_is_secure_unless_asked(simulated, tmp_path, monkeypatch, capsys):
    """`federation` prints a TLS deployment that registers each organization's key; with
    --insecure it prints the plain one and warns what that lets anyone do."""
    from collab_lib.cli import main

    cfg, _, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    args = ["federation", FEDERATED, "--profile", cfg.source]
    assert main([*args, "--dir", str(tmp_path / "secure")]) == 0
    out = capsys.readouterr()
    assert "--insecure" not in out.out and out.err == ""
    assert out.out.count("flwr supernode register") == len(cfg.datasets.organizations)
    assert out.out.count("--root-certificates") == len(cfg.datasets.organizations)
    keys = sorted(p.name for p in (tmp_path / "secure" / "secrets").iterdir())
    orgs = [o.name for o in cfg.datasets.organizations]
    tls = ["ca.crt", "host", "superlink.crt", "superlink.key"]
    assert keys == sorted([*orgs, *(f"{o}.pub" for o in orgs), *tls])
    ca = (tmp_path / "secure" / "secrets" / "ca.crt").read_bytes()
    assert main([*args, "--dir", str(tmp_path / "secure")]) == 0  # set up again: same keys
    assert (tmp_path / "secure" / "secrets" / "ca.crt").read_bytes() == ca
    capsys.readouterr()
    assert main([*args, "--dir", str(tmp_path / "wild"), "--host", "0.0.0.0"]) == 2
    assert "not a wildcard" in capsys.readouterr().err
    assert main([*args, "--dir", str(tmp_path / "open"), "--insecure"]) == 0
    out = capsys.readouterr()
    assert "warning: --insecure" in out.err and "send updates into it" in out.err
    assert "supernode register" not in out.out and out.out.count("--insecure") == 1 + len(orgs)
    assert not (tmp_path / "open" / "secrets").exists()


class _Grid:
    """Flower's grid as far as the strategies use it: the connected nodes, and messages."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes, self.sent = nodes, []

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages, timeout=None):
        self.sent += list(messages)
        return []


def test_a_node_beyond_the_organizations_stops_the_run_before_any_model_is_sent():
    """Flower 1.42's Control API lets whoever reaches the SuperLink register a key: the
    ServerApp starts no round while more nodes than organizations are connected."""
    rc = {"strategy": "FedAvg", "num-nodes": 2, "seed": 0}
    strategy = server_app.make_strategy(rc)
    strategy.setup(rc, Path("unused"))
    grid = _Grid([11, 12, 13])
    # the strategy's own start, as the ServerApp calls it: it guards every grid it is given
    with pytest.raises(RuntimeError, match="3 SuperNodes are connected where 2 organizations"):
        strategy.start(grid, ArrayRecord(), num_rounds=1, train_config=ConfigRecord())
    assert grid.sent == []
    grid.nodes = [11, 12]
    assert sorted(server_app.OrganizationsOnly(grid, 2).get_node_ids()) == [11, 12]


def _client_replies(rc, nodes, base, config) -> list[RecordDict]:
    """Each organization's reply to one round's message (from the base model's weights),
    computed here as its ClientApp computes it."""
    out = []
    for node in nodes:
        msg = Message(
            content=RecordDict({"arrays": task.to_arrays(task.load_model(base)), "config": config}),
            message_type=MessageType.TRAIN,
            dst_node_id=1,
        )
        context = Context(
            run_id=1,
            node_id=1,
            state=RecordDict(),
            run_config=rc,
            node_config={"organization": node.organization, "data-path": str(node.data_path)},
        )
        out.append(client_app.app(msg, context).content)
    return out


def _numpy(reply: RecordDict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply["arrays"].items()}


def test_organization_level_dp_clips_each_update_and_noises_their_plain_mean(
    simulated, tmp_path, monkeypatch
):
    """Flower's server-side fixed clipping around FedAvg: each organization's update clipped
    to the norm, their unweighted mean, then Gaussian noise of sd noise x clip / n."""
    cfg, _, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    base = collaboration.build_base_model(cfg).path
    texts = collaboration.training_texts(cfg, pipeline.planned_for("train", cfg))
    pair = {org: texts[org] for org in ("Microsoft", "Google")}
    clip, got = 0.05, {}
    for noise in (0.0, 1.0):
        dp = {"level": "organization", "noise": noise, "clip": clip}
        work = tmp_path / f"noise{noise:g}"
        app, rc, nodes = launch.prepare(cfg, "FedAvg", pair, base, work, work / "out", dp=dp)
        rc = rc | {"num-rounds": 1}
        launch.simulate(app, rc, root / ".flwr")
        got[noise] = _weights(work / "out" / "model")
    config = ConfigRecord(
        {"context": cfg.model.context, "num-rounds": 1, "round": 1, "seed": cfg.seed * 10_007 + 1}
        | task.to_run_config(cfg.train)
    )
    start = {k: v.numpy() for k, v in task.to_arrays(task.load_model(base)).items()}
    clipped = []
    for reply in map(_numpy, _client_replies(rc, nodes, base, config)):
        update = {k: reply[k] - start[k] for k in start}
        norm = np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in update.values()))
        assert norm > clip  # the clipping bites
        clipped.append({k: u * min(1.0, clip / norm) for k, u in update.items()})
    expected = {k: start[k] + (clipped[0][k] + clipped[1][k]) / 2 for k in start}
    for k in start:
        assert np.allclose(got[0.0][k], expected[k], rtol=1e-4, atol=1e-6), k
    noise = np.concatenate([(got[1.0][k] - expected[k]).ravel() for k in start])
    assert np.std(noise) == pytest.approx(1.0 * clip / 2, rel=0.05)


def test_example_level_dp_runs_dp_sgd_in_each_client(simulated, tmp_path, monkeypatch):
    """With ``dp-noise`` in the round's message a client trains by DP-SGD on its own data:
    other weights than the plain client's, the same for the same message."""
    cfg, _, root = simulated
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    base = collaboration.build_base_model(cfg).path
    texts = collaboration.training_texts(cfg, pipeline.planned_for("train", cfg))
    one = {"Microsoft": texts["Microsoft"]}
    dp = {"level": "example", "noise": 1.0, "clip": 1.0, "batch": 8}
    app, rc, nodes = launch.prepare(cfg, "FedAvg", one, base, tmp_path, tmp_path / "out", dp=dp)
    assert rc["dp-level"] == "example"
    round_1 = {"context": cfg.model.context, "num-rounds": 1, "round": 1, "seed": 3}
    plain = ConfigRecord(round_1 | task.to_run_config(cfg.train))
    dp_keys = {"dp-noise": 1.0, "dp-clip": 1.0, "dp-batch": 8}
    private = ConfigRecord(round_1 | task.to_run_config(cfg.train) | dp_keys)
    a, b = (_numpy(_client_replies(rc, nodes, base, private)[0]) for _ in range(2))
    c = _numpy(_client_replies(rc, nodes, base, plain)[0])
    _assert_same(a, b)
    assert not np.array_equal(a["transformer.wte.weight"], c["transformer.wte.weight"])
    # the same data under another organization's name: its own samples and noise (the
    # round's message is the same for every client)
    twin = [launch.NodeData("Google", nodes[0].data_path)]
    d = _numpy(_client_replies(rc, twin, base, private)[0])
    assert not np.array_equal(a["transformer.wte.weight"], d["transformer.wte.weight"])
    plain_twin = _numpy(_client_replies(rc, twin, base, plain)[0])
    _assert_same(c, plain_twin)  # plain training: the organization's name changes nothing
