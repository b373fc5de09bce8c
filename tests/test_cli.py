import io
import subprocess
import sys

import pandas as pd
import pytest

from collab_lib.cli import main


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "collab_lib", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "table", "status", "book"):
        assert command in proc.stdout


def test_run_then_table_then_status(local_profile, course_run, monkeypatch, capsys):
    code, _, err = run_cli("table", "table3", "--profile", str(local_profile), capsys=capsys)
    assert code == 2 and "run datasets --profile" in err

    code, out, _ = run_cli("status", "--profile", str(local_profile), capsys=capsys)
    assert (
        code == 0
        and "missing" in out
        and "would run: datasets, clones, canaries, psi, train, rq1" in out
    )

    # every step has run for the book's profile (the session's book build): `run all` finds
    # it all cached, and status has nothing left to run
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(course_run.artifacts))
    profile = ("--profile", str(course_run.profile), "--set", "seed=5")
    assert run_cli("run", "all", *profile, capsys=capsys)[0] == 0

    code, out, _ = run_cli("table", "table4", *profile, capsys=capsys)
    t4 = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(t4["organization"]) == ["Facebook", "Microsoft", "Google"]

    code, out, _ = run_cli("status", *profile, capsys=capsys)
    assert "missing" not in out and "would run: nothing" in out


def test_set_overrides_reach_the_step(local_profile, capsys):
    args = ("--profile", str(local_profile), "--set", "datasets.organizations.Google.size_mb=0.003")
    assert run_cli("run", "datasets", *args, capsys=capsys)[0] == 0
    out = run_cli("table", "table3", *args, capsys=capsys)[1]
    t3 = pd.read_csv(io.StringIO(out)).set_index(["organization", "split"])
    assert t3.loc[("Google", "train"), "files"] < 16


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(("--set", "sede=1"), "unknown key 'sede'", id="unknown-key"),
        pytest.param(("--set", "seed=x"), "seed: expected an integer", id="wrong-type"),
        pytest.param(("--set", "seed"), "must look like key=value", id="no-equals"),
    ],
)
def test_config_errors_exit_2_with_the_key(args, message, capsys):
    code, _, err = run_cli("status", "--profile", "tiny", *args, capsys=capsys)
    assert code == 2 and message in err


def test_unknown_table_lists_known_ones(capsys):
    code, _, err = run_cli("table", "table99", "--profile", "tiny", capsys=capsys)
    assert code == 2 and "known tables: table2" in err
