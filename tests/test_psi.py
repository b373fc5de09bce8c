"""Clone removal by private set intersection: three organizations on one machine, each with
its own state, exchanging only the files the ``psi`` command writes."""

from __future__ import annotations

import json
import shutil
import struct
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from collab_lib import cli, clones, psi
from collab_lib.clones import CloneOptions
from collab_lib.config import ConfigError, UserError, load_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
OPTS = CloneOptions()
ORGS = ("Alpha", "Beta", "Gamma")


def _patched(text: str, every: int) -> str:
    """The file as a fork would carry it: every ``every``-th line changed."""
    lines = text.splitlines(keepends=True)
    for i in range(every - 1, len(lines), every):
        if lines[i].strip():
            lines[i] = lines[i].rstrip("\n") + "  # patched\n"
    return "".join(lines)


@pytest.fixture(scope="module")
def orgs(tmp_path_factory) -> dict[str, Path]:
    """Real standard-library code: Alpha and Beta share textwrap (Beta's patched), all three
    json's decoder (Beta's patched), Alpha and Gamma csv; each has code of its own."""
    root = tmp_path_factory.mktemp("orgs")
    src = {n: (STDLIB / n).read_text() for n in ("textwrap.py", "json/decoder.py", "csv.py")}
    files = {
        "Alpha": {
            "wrap.py": src["textwrap.py"],
            "vendor/decoder.py": src["json/decoder.py"],
            "tables.py": src["csv.py"],
            "own.py": (STDLIB / "shlex.py").read_text(),
        },
        "Beta": {
            "text/wrap.py": _patched(src["textwrap.py"], 9),
            "decoder.py": _patched(src["json/decoder.py"], 7),
            "own.py": (STDLIB / "string.py").read_text(),
        },
        "Gamma": {
            "third_party/json_decoder.py": src["json/decoder.py"],
            "io/csv_compat.py": src["csv.py"],
            "own.py": (STDLIB / "fractions.py").read_text(),
        },
    }
    out = {}
    for org, tree in files.items():
        for name, text in tree.items():
            (root / org / name).parent.mkdir(parents=True, exist_ok=True)
            (root / org / name).write_text(text)
        out[org] = root / org
    return out


def _run(*argv: str, capsys) -> dict:
    assert cli.main(["psi", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exchange(orgs, tmp_path_factory):
    """The three steps, each organization with its own state directory; the ``wire``
    directory holds every file that travels, and only those."""
    root = tmp_path_factory.mktemp("psi")
    wire = root / "wire"
    state = {o: root / "private" / o for o in ORGS}
    outs = {}

    def run(*argv):
        assert cli.main(["psi", *argv]) == 0

    for o in ORGS:
        run("request", "--code", str(orgs[o]), "--state", str(state[o]), "--out",
            str(wire / f"{o}.request"))  # fmt: skip
    for o in ORGS:
        for other in ORGS:
            if other != o:
                run("answer", "--code", str(orgs[o]), "--state", str(state[o]),
                    "--request", str(wire / f"{other}.request"),
                    "--out", str(wire / f"{o}-to-{other}.answer"))  # fmt: skip
    for o in ORGS:
        answers = [f"--answer={x}={wire / f'{x}-to-{o}.answer'}" for x in ORGS if x != o]
        outs[o] = root / "dedup" / o
        run("remove", "--code", str(orgs[o]), "--state", str(state[o]), *answers,
            "--out", str(outs[o]))  # fmt: skip
    return {"wire": wire, "state": state, "out": outs, "root": root}


def _corpus(path: Path):
    return clones.build_corpus(clones.read_tree(path), OPTS)


def test_each_organization_removes_exactly_what_the_detector_finds_shared(orgs, exchange):
    """Recall 1 and no false positive against the centralized detector (Table 7's method,
    run with every organization's code in one place): the lines each organization cut are
    the lines of its blocks found in any other organization."""
    for o in ORGS:
        mine = _corpus(orgs[o])
        truth = np.zeros(mine.n_lines, bool)
        for other in ORGS:
            if other != o:
                truth |= clones.cross_covered([mine, _corpus(orgs[other])], OPTS)[0]
        removed = json.loads((exchange["state"][o] / "removed.json").read_text())["removed"]
        cut = np.zeros(mine.n_lines, bool)
        for f, name in enumerate(mine.names):
            rel = str(Path(name).relative_to(orgs[o]))
            lo, hi = mine.starts[f], mine.starts[f + 1]
            for a, b in removed.get(rel, []):
                lines = mine.line_no[lo:hi]
                cut[lo:hi] |= (lines >= a) & (lines <= b)
        assert truth.sum() > 100, o  # every organization shares real code
        assert (cut == truth).all(), o


def test_no_window_is_shared_after_removal_and_own_code_stays(orgs, exchange):
    outs = exchange["out"]
    for o in ORGS:
        for other in ORGS:
            if other != o:
                report = clones.cross_clones([_corpus(outs[o]), _corpus(outs[other])], OPTS)
                assert report.blocks == [], (o, other)
        # what no one else has is kept whole
        assert (outs[o] / "own.py").read_text() == (orgs[o] / "own.py").read_text()


def test_what_travels_reveals_no_window_outside_the_intersection(orgs, exchange):
    """The wire holds requests and answers only: no code line, no fingerprint in the clear
    (hex or raw bytes); an answer reveals membership only for the request it answered, and
    a request made twice with fresh keys shares no byte pattern with the first."""
    wire = exchange["wire"]
    assert sorted(p.suffix for p in wire.iterdir()) == [".answer"] * 6 + [".request"] * 3
    blob = b"".join(p.read_bytes() for p in wire.iterdir())
    for o in ORGS:
        win = psi.Party(orgs[o], exchange["state"][o], OPTS).windows()
        for key in win.keys[:500].tolist():
            assert f"{key:016x}".encode() not in blob
            assert key.to_bytes(8, "little") not in blob and key.to_bytes(8, "big") not in blob
        for line in (orgs[o] / "own.py").read_text().splitlines()[:200]:
            if len(line.strip()) > 20:
                assert line.strip().encode() not in blob
    # Alpha holds Beta's filter. Alpha can blind a guess with its own key, but without
    # Beta's key on it nothing tests positive, not even windows Beta does hold: each test
    # needs an answer from Beta, and an answer serves the request it answered only.
    alpha, beta = (psi.Party(orgs[o], exchange["state"][o], OPTS) for o in ("Alpha", "Beta"))
    header, payload = psi.read_message(wire / "Beta-to-Alpha.answer", "answer", OPTS)
    (n,) = struct.unpack(">Q", payload[:8])
    client_key, _ = alpha.keys()
    guesses = beta.windows().elements[:300]  # every one in Beta's filter
    lib = psi._psi()
    guess = lib.Request()
    guess.ParseFromString(psi.request(guesses, client_key))
    forged = lib.Response()
    forged.encrypted_elements.extend(guess.encrypted_elements)
    assert (
        psi.intersect(guesses, client_key, payload[: 8 + n] + forged.SerializeToString()) == set()
    )
    with pytest.raises(UserError, match="another request"):
        psi.intersect(guesses, client_key, payload)
    assert header["elements"] == len(beta.windows().elements)  # the size: what Alpha learns
    # Beta's request blinds every window: two requests with fresh keys share no element
    first = psi.request(guesses, psi.new_key())
    second = psi.request(guesses, psi.new_key())
    chunks = {first[i : i + 33] for i in range(0, len(first) - 33, 37)}
    assert not any(c in second for c in chunks)


def test_owner_mode_keeps_one_copy_with_the_first_holder(orgs, exchange, tmp_path, capsys):
    """With --owner, the first organization in the agreed order keeps its copies; the others
    drop theirs, so the union still holds each shared block once."""
    wire, state = exchange["wire"], exchange["state"]
    got = {}
    for o in ORGS:
        answers = [f"--answer={x}={wire / f'{x}-to-{o}.answer'}" for x in ORGS if x != o]
        got[o] = _run("remove", "--code", str(orgs[o]), "--state", str(state[o]), *answers,
                      "--out", str(tmp_path / o), "--owner", "--me", o,
                      "--order", ",".join(ORGS), capsys=capsys)  # fmt: skip
    assert got["Alpha"]["lines removed"] == 0
    assert got["Beta"]["lines removed"] > 0 and got["Gamma"]["lines removed"] > 0
    # Alpha and Beta's shared textwrap windows survive in Alpha only
    report = clones.cross_clones([_corpus(tmp_path / "Alpha"), _corpus(orgs["Beta"])], OPTS)
    assert report.blocks
    report = clones.cross_clones([_corpus(tmp_path / "Beta"), _corpus(orgs["Alpha"])], OPTS)
    assert report.blocks == []


def test_mismatched_settings_and_missing_keys_are_clear_errors(orgs, exchange, tmp_path, capsys):
    wire, state = exchange["wire"], exchange["state"]
    code = cli.main(["psi", "answer", "--code", str(orgs["Alpha"]), "--state",
                     str(state["Alpha"]), "--request", str(wire / "Beta.request"),
                     "--out", str(tmp_path / "x"), "--min-lines", "5"])  # fmt: skip
    assert code == 2
    assert "--min-lines" in capsys.readouterr().err
    code = cli.main(["psi", "answer", "--code", str(orgs["Alpha"]), "--state",
                     str(tmp_path / "none"), "--request", str(wire / "Beta.request"),
                     "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "psi request" in capsys.readouterr().err
    code = cli.main(["psi", "remove", "--code", str(orgs["Alpha"]), "--state",
                     str(state["Alpha"]), "--answer", str(wire / "Beta.request"),
                     "--out", str(tmp_path / "y")])  # fmt: skip
    assert code == 2
    assert "ORG=FILE" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no Python files"):
        psi.Party(empty, tmp_path / "s", OPTS).windows()


def test_cut_breaks_lines_where_the_detector_does():
    text = "a\n\x0cb\r\nc\rd\ne"
    assert psi.cut(text, [(2, 3)]) == "a\nd\ne"
    assert psi.cut(text, []) == text


def test_roster_adds_the_psi_models_and_keeps_the_plain_ones_keys():
    from collab_lib import collaboration

    cfg = load_config("default")
    names = [s.name for s in collaboration.roster(cfg) if s.rq == collaboration.PSI]
    assert names == ["Federated_Avg_MG_PSI", "Incremental_M2G_PSI"]
    refs = ["datasets/d", "canaries/c"]
    plain = collaboration.jobs(cfg, "base/b", refs, "psi/p")
    other = collaboration.jobs(load_config("default", ["psi.fpr=1e-10"]), "base/b", refs, "psi/q")
    for name, chain in plain.items():
        same = [j.key for j in chain] == [j.key for j in other[name]]
        assert same == (not name.endswith("_PSI")), name
        assert all(j.deduplicated == name.endswith("_PSI") for j in chain)
    assert all("psi/p" in j.inputs for j in plain["Incremental_M2G_PSI"])
    none = load_config("default", ["psi.models=[]"])
    assert not any(n.endswith("_PSI") for n in collaboration.model_names(none))
    with pytest.raises(ConfigError, match="psi.models"):
        load_config("default", ["psi.models=[Federated]"])
    with pytest.raises(ConfigError, match="psi.removal"):
        load_config("default", ["psi.removal=keep"])


def test_pipeline_step_records_accuracy_cost_and_removal(course_cfg):
    """The course run's psi step: every pair, recall 1, no false positive; the _PSI models
    trained on its removal."""
    from collab_lib import pipeline

    acc = pipeline.table("psi_accuracy", course_cfg)
    assert len(acc) == 6
    assert (acc["recall"] == 1.0).all() and (acc["false positive lines"] == 0).all()
    assert (acc["shared lines (PSI)"] == acc["shared lines (detector)"]).all()
    cost = pipeline.table("psi_cost", course_cfg)
    assert (cost["bytes sent"] > 0).all()


def test_a_changed_request_a_damaged_answer_and_an_empty_side_are_clear(
    orgs, exchange, tmp_path, capsys
):
    """Step 3 refuses an answer to an older request (the code or the keys moved on) and a
    damaged one with a message; an organization with no window takes part all the same."""
    wire = exchange["wire"]
    state = tmp_path / "state"
    shutil.copytree(exchange["state"]["Alpha"], state)
    code = ["--code", str(orgs["Alpha"]), "--state", str(state)]
    answer = f"--answer=Beta={wire / 'Beta-to-Alpha.answer'}"
    (state / "secret.json").unlink()  # new keys: a new request, which Beta never answered
    assert cli.main(["psi", "request", *code, "--out", str(tmp_path / "again.request")]) == 0
    assert cli.main(["psi", "remove", *code, answer, "--out", str(tmp_path / "o")]) == 2
    assert "another request" in capsys.readouterr().err
    changed = tmp_path / "changed"
    shutil.copytree(orgs["Alpha"], changed)
    (changed / "more.py").write_text((STDLIB / "colorsys.py").read_text())
    moved = ["--code", str(changed), "--state", str(state)]
    assert cli.main(["psi", "remove", *moved, answer, "--out", str(tmp_path / "o")]) == 2
    assert "changed since `psi request`" in capsys.readouterr().err
    shutil.copytree(exchange["state"]["Alpha"], state, dirs_exist_ok=True)  # the old request
    raw = (wire / "Beta-to-Alpha.answer").read_bytes()
    damaged = tmp_path / "damaged.answer"
    damaged.write_bytes(raw[: len(raw) // 2])
    args = ["psi", "remove", *code, f"--answer=Beta={damaged}", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    assert "damaged" in capsys.readouterr().err
    ex = psi.run({"A": [], "B": ["00", "01"]}, 1e-9, {o: (psi.new_key(),) * 2 for o in "AB"})
    assert ex.shared == {"A": {"B": set()}, "B": {"A": set()}}


def test_cut_takes_a_continued_line_whole_and_keeps_line_ends():
    """The detector counts a line continued by a backslash as one (numbered by its first):
    cutting it takes the continuation too. CRLF files stay CRLF after removal."""
    text = "a = 1\nb = 'x\\\ny'\nz = 9\n"
    assert psi.cut(text, [(1, 2)]) == "z = 9\n"
    assert psi.cut(text.replace("\n", "\r\n"), [(4, 4)]) == "a = 1\r\nb = 'x\\\r\ny'\r\n"


def test_only_a_string_continued_by_a_backslash_is_one_line():
    """An explicit `\\` join leaves the next line counted on its own: cutting the first keeps
    it."""
    assert psi.cut("x = a + \\\n    b\ny = 2\n", [(1, 1)]) == "    b\ny = 2\n"


def test_remove_refuses_to_write_into_the_code_and_request_into_a_folder(orgs, exchange, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(orgs["Alpha"], code)
    party = psi.Party(code, exchange["state"]["Alpha"], OPTS)
    answers = {"Beta": exchange["wire"] / "Beta-to-Alpha.answer"}
    for out in (code, code / "dedup"):
        with pytest.raises(UserError, match="inside --code"):
            psi.party_remove(party, answers, out)
    assert (code / "own.py").read_text() == (orgs["Alpha"] / "own.py").read_text()
    with pytest.raises(UserError, match="a directory"):
        psi.party_request(psi.Party(code, tmp_path / "s", OPTS), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no Python files"):
        psi.party_request(psi.Party(empty, tmp_path / "e", OPTS), tmp_path / "r")
    assert not (tmp_path / "e").exists()  # no keys made for a folder without code
    with pytest.raises(UserError, match="psi request"):
        psi.Party(code, tmp_path / "s2", OPTS).asked()


def test_a_request_whose_header_lies_about_its_size_is_not_answered(orgs, exchange, tmp_path):
    header, payload = psi.read_message(exchange["wire"] / "Beta.request", "request", OPTS)
    lie = tmp_path / "lie.request"
    psi.write_message(lie, header | {"elements": 3}, payload)
    party = psi.Party(orgs["Alpha"], exchange["state"]["Alpha"], OPTS)
    with pytest.raises(UserError, match="header says 3 windows"):
        psi.party_answer(party, lie, tmp_path / "a", 1e-9)
