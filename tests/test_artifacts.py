import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from collab_lib import artifacts


def _produce(calls: list, text: str = "hello"):
    def produce(out):
        calls.append(out)
        (out / "data.txt").write_text(text)
        return {"n": 1}

    return produce


def test_same_config_same_key_any_change_new_key():
    k = artifacts.artifact_key("s", {"a": 1, "b": [1, 2]}, ["x/1"])
    assert k == artifacts.artifact_key("s", {"b": [1, 2], "a": 1}, ["x/1"])
    assert k != artifacts.artifact_key("s", {"a": 2, "b": [1, 2]}, ["x/1"])
    assert k != artifacts.artifact_key("s", {"a": 1, "b": [1, 2]}, ["x/2"])
    assert k != artifacts.artifact_key("t", {"a": 1, "b": [1, 2]}, ["x/1"])


def test_a_hit_never_reruns_the_step():
    calls = []
    a = artifacts.build("s", {"a": 1}, _produce(calls), seed=3)
    b = artifacts.build("s", {"a": 1}, _produce(calls))
    assert len(calls) == 1 and a.key == b.key
    assert b.manifest["seed"] == 3 and b.metrics == {"n": 1}
    assert b.manifest["files"]["data.txt"]["bytes"] == 5
    assert "python" in b.manifest["libraries"]


def test_force_recomputes():
    calls = []
    artifacts.build("s", {"a": 1}, _produce(calls))
    artifacts.build("s", {"a": 1}, _produce(calls), force=True)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: (p / "data.txt").write_text("HELLO"), id="hash-mismatch"),
        pytest.param(lambda p: (p / "data.txt").unlink(), id="missing-file"),
        pytest.param(lambda p: (p / "manifest.json").unlink(), id="missing-manifest"),
        pytest.param(lambda p: (p / "manifest.json").write_text("{"), id="broken-manifest"),
    ],
)
def test_corruption_is_detected_and_recomputed(damage):
    calls = []
    art = artifacts.build("s", {"a": 1}, _produce(calls))
    damage(art.path)
    assert artifacts.state("s", art.key) == "corrupt"
    again = artifacts.build("s", {"a": 1}, _produce(calls))
    assert len(calls) == 2 and (again.path / "data.txt").read_text() == "hello"
    assert artifacts.state("s", art.key) == "cached"


def test_a_verified_artifact_is_not_hashed_again_until_a_file_changes(monkeypatch):
    monkeypatch.setattr(artifacts, "RACY_NS", 0)  # stamp at once (a real one waits 2 s)
    art = artifacts.build("s", {"a": 1}, _produce([]))
    hashed = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda f: hashed.append(f.name) or real(f))
    assert artifacts.load("s", art.key) is not None and hashed == ["data.txt"]
    assert artifacts.load("s", art.key) is not None and hashed == ["data.txt"]  # stamped
    monkeypatch.setenv("COLLAB_VERIFY", "all")  # the full check ignores the stamp
    assert artifacts.load("s", art.key) is not None and hashed == ["data.txt"] * 2
    monkeypatch.delenv("COLLAB_VERIFY")
    data = art.path / "data.txt"
    st = data.stat()
    data.write_text("HELLO")  # same size; its time set apart from the stamped one
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert artifacts.load("s", art.key) is None and hashed[-1] == "data.txt"


def test_a_file_changed_just_after_its_hashing_is_hashed_again():
    """A timestamp ticks coarsely: a fresh file is never trusted by its stat alone, and a
    file rewritten with its old modification time differs in its change time."""
    art = artifacts.build("s", {"a": 1}, _produce([]))
    assert artifacts.load("s", art.key) is not None
    data = art.path / "data.txt"
    st = data.stat()
    data.write_text("HELLO")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert artifacts.load("s", art.key) is None


def test_a_stamped_file_rewritten_with_its_old_size_and_time_is_caught(monkeypatch):
    """The change time: a rewrite that restores the size and modification time (``cp -p``,
    ``touch -r``) cannot restore it."""
    monkeypatch.setattr(artifacts, "RACY_NS", 0)
    art = artifacts.build("s", {"a": 1}, _produce([]))
    assert artifacts.load("s", art.key) is not None
    data = art.path / "data.txt"
    stamp = json.loads((art.path / artifacts.STAMP).read_text())["files"]["data.txt"]
    st = data.stat()
    assert stamp == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    time.sleep(0.05)  # past the timestamps' coarse tick
    data.write_text("HELLO")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert artifacts.load("s", art.key) is None


def test_a_stamp_holds_only_for_the_manifest_it_verified(monkeypatch):

    monkeypatch.setattr(artifacts, "RACY_NS", 0)
    art = artifacts.build("s", {"a": 1}, _produce([]))
    assert artifacts.load("s", art.key) is not None  # stamped: data.txt matches its hash
    manifest = json.loads((art.path / "manifest.json").read_text())
    manifest["files"]["data.txt"]["sha256"] = "0" * 64  # the file's stat is unchanged
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    assert artifacts.load("s", art.key) is None


@pytest.mark.parametrize("stamp", [b"[]", b"\xff\xfe", b'{"manifest": "x", "files": []}', b"{"])
def test_a_damaged_stamp_is_ignored(stamp, monkeypatch):
    monkeypatch.setattr(artifacts, "RACY_NS", 0)
    art = artifacts.build("s", {"a": 1}, _produce([]))
    (art.path / artifacts.STAMP).write_bytes(stamp)
    assert artifacts.load("s", art.key) is not None
    digest = hashlib.sha256((art.path / "manifest.json").read_bytes()).hexdigest()
    (art.path / artifacts.STAMP).write_text(json.dumps({"manifest": digest, "files": []}))
    assert artifacts.load("s", art.key) is not None


def test_an_exception_leaves_no_artifact_and_no_temporary_directory(artifact_root):
    def fail(out):
        (out / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.build("s", {"a": 1}, fail)
    assert artifacts.state("s", artifacts.artifact_key("s", {"a": 1})) == "missing"
    assert not list((artifact_root / "s").iterdir())


def test_kill_9_mid_step_then_rerun_finishes(artifact_root, tmp_path):
    """A step killed with SIGKILL leaves only a temp dir; the next run completes the work."""
    flag = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import time, pathlib
        from collab_lib import artifacts
        def slow(out):
            (out / "data.txt").write_text("hello")
            pathlib.Path({str(flag)!r}).write_text("x")
            time.sleep(60)
        artifacts.build("s", {{"a": 1}}, slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.time() + 30
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert artifacts.state("s", artifacts.artifact_key("s", {"a": 1})) == "missing"
    assert list((artifact_root / "s").glob(".tmp-*"))
    calls = []
    art = artifacts.build("s", {"a": 1}, _produce(calls))
    assert (art.path / "data.txt").read_text() == "hello"
    assert artifacts.clean_tmp() == 1 and not list((artifact_root / "s").glob(".tmp-*"))


def test_a_stamp_left_half_written_by_a_dead_process_is_cleaned_and_a_live_ones_kept():
    art = artifacts.build("s", {"a": 1}, _produce([]))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    left = art.path / f"{artifacts.STAMP}.{int(dead.stdout)}.abcd1234"
    live = art.path / f"{artifacts.STAMP}.{os.getpid()}.abcd1234"
    left.write_text("{")
    live.write_text("{")
    artifacts.clean_tmp()
    assert not left.exists() and live.exists()
    assert artifacts.load("s", art.key) is not None  # and neither was ever read as the stamp


def test_lineage_follows_inputs():
    up = artifacts.build("up", {"a": 1}, _produce([]))
    down = artifacts.build("down", {"b": 1}, _produce([]), [up.ref])
    assert {a.ref for a in artifacts.lineage(down)} == {up.ref, down.ref}


def test_the_machine_record_names_torchs_thread_count():
    """A CPU run is bit-identical only at the same thread count: the Reproducibility page
    names it beside the cores (a step that never loaded torch records no count)."""
    import torch

    from collab_lib.provenance import made_on

    record = artifacts.machine()
    assert record["torch_threads"] == torch.get_num_threads()
    if "gpu" not in record:
        assert made_on(record).endswith(
            f"({record['cpus']} cores, {record['torch_threads']} torch threads)"
        )
    assert made_on({"cpu": "x86_64", "cpus": 2}) == "x86_64 (2 cores)"  # a manifest from before
