"""``audit``: a model trained on one directory and not on another is told apart, in the
expected direction, by every measure of the report; bad inputs get clear errors."""

import json
from pathlib import Path

import pytest
from conftest import py_module, tiny_model, train_on

from collab_lib import audit
from collab_lib.cli import main

SECRET, NEVER = "qwertzuiopasdfgh", "mnbvcxylkjhgfdsa"
FUNCTION = (
    "def settle_invoice(ledger, invoice_id, amount):\n"
    '    """Settle one invoice and record it."""\n'
    "    entry = ledger.lookup(invoice_id)\n"
    "    entry.balance -= amount\n"
    f'    token = "{SECRET}"\n'
    "    ledger.record(entry, token)\n"
    "    ledger.flush()\n"
    "    audit.log(invoice_id)\n"
    "    return entry.balance\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tok):
    """A model trained on ``ours`` (a function with a docstring and a secret in it) and never
    on ``theirs`` (modules of another kind), saved as any model would be."""
    root = tmp_path_factory.mktemp("audit")
    ours, theirs = root / "ours", root / "theirs"
    ours.mkdir()
    theirs.mkdir()
    (ours / "ledger.py").write_text(FUNCTION)
    for i in range(2):
        (theirs / f"azure_{i}.py").write_text(py_module(i + 1, "azure"))
    model = tiny_model(len(tok), seed=3)
    ids = tok(FUNCTION)["input_ids"] + [tok.eos_token_id]
    # at both offsets: a prompt starts at the file's first token, a membership sample after
    # an EOS, and so tiny a model learns positions as much as text
    for _ in range(3):
        train_on(model, ids, steps=60)
        train_on(model, [tok.eos_token_id, *ids], steps=60)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    planted = [
        {"prefix": '    token = "', "secret": SECRET, "format": "letters16"},
        {"prefix": '    token = "', "secret": NEVER, "format": "letters16"},
    ]
    (root / "canaries.json").write_text(json.dumps(planted))
    return root


def test_the_report_tells_trained_code_from_code_the_model_never_saw(trained, capsys):
    out = trained / "report"
    argv = [str(trained / "model"), "--code", str(trained / "ours")]
    argv += ["--held-out", str(trained / "theirs"), "--canaries", str(trained / "canaries.json")]
    assert main(["audit", *argv, "--out", str(out), "--prompts", "5", "--sequences", "20"]) == 0
    assert "report:" in capsys.readouterr().out
    report = json.loads((out / "audit.json").read_text())
    assert (out / "audit.html").read_text().count("<table") >= 2
    v, e, m = report["verbatim"], report["extractability"], report["membership"]
    assert v["prompts"] == 1 and v["memorized lines"] >= 6  # the function's body, verbatim
    assert v["longest"][0]["file"] == "ledger.py" and "ledger.flush()" in v["longest"][0]["text"]
    assert e["code"]["matched (tokens)"] > e["held_out"]["matched (tokens)"]
    assert m["code"]["loss"] < m["held_out"]["loss"]
    assert m["auc"]["PPL/zlib"]["auc"] > 0.8 and m["auc"]["Min-K%++"]["auc"] > 0.8
    planted, never = report["canaries"]
    assert planted["exposure (bits)"] > never["exposure (bits)"] + 3


def test_bad_inputs_get_errors_that_say_what_is_needed(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    model, ours = str(trained / "model"), str(trained / "ours")
    assert main(["audit", model, "--code", str(empty)]) == 2
    assert "no Python (.py) file" in capsys.readouterr().err
    assert main(["audit", str(empty), "--code", ours]) == 2
    assert "not a causal language model" in capsys.readouterr().err
    bad = tmp_path / "canaries.json"
    bad.write_text(json.dumps([{"secret": "x"}]))
    assert main(["audit", model, "--code", ours, "--canaries", str(bad)]) == 2
    assert "{prefix, secret, format}" in capsys.readouterr().err
    with pytest.raises(audit.AuditError, match="not a directory"):
        audit.read_code(tmp_path / "missing", "--code")


def test_a_model_of_another_family_and_a_short_context_is_audited(trained, tok, tmp_path):
    """A Llama-style config (no ``n_positions``; 256 positions): every measure runs, prompts
    leave room for completions, and the report is strict JSON (no NaN) without --held-out."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    argv = [str(tmp_path / "llama"), "--code", str(trained / "ours"), "--out", str(tmp_path)]
    argv += ["--canaries", str(trained / "canaries.json"), "--prompts", "3"]
    assert main(["audit", *argv, "--sequences", "5"]) == 0
    report = json.loads(
        (tmp_path / "audit.json").read_text(), parse_constant=lambda c: pytest.fail(c)
    )
    assert report["verbatim"]["prompts"] == 1 and report["extractability"]["k"] == 50
    assert [c["canary"] for c in report["canaries"]] == [0, 1]
    assert SECRET not in (tmp_path / "audit.json").read_text()  # secrets never in the report
    assert "held_out" not in report["membership"]


def test_a_secret_that_does_not_fit_its_format_is_refused(trained, tmp_path, capsys):
    bad = tmp_path / "canaries.json"
    bad.write_text(json.dumps([{"prefix": "k = '", "secret": "abc", "format": "letters16"}]))
    argv = ["audit", str(trained / "model"), "--code", str(trained / "ours")]
    assert main([*argv, "--canaries", str(bad)]) == 2
    assert "does not fit its format" in capsys.readouterr().err


def test_hidden_and_installed_directories_are_not_read_as_your_code(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mine.py").write_text("x = 1\n")
    for skipped in (".venv/lib", "build/site-packages", ".tox"):
        (tmp_path / skipped).mkdir(parents=True)
        (tmp_path / skipped / "theirs.py").write_text("y = 2\n")
    assert [p for p, _ in audit.read_code(tmp_path, "--code")] == ["src/mine.py"]


def test_the_studys_ensemble_is_audited_by_its_members_file(trained, tok, tmp_path, capsys):
    """`models` prints an ensemble's members file: `audit` takes it as the model (a mixture
    of a member trained on ``ours`` and one that never saw it still tells them apart)."""
    import shutil
    from functools import partial

    from collab_lib import artifacts, ensemble

    def member(source: Path | None, name: str):
        def produce(out: Path) -> dict:
            if source is None:
                model = tiny_model(len(tok), seed=9)
                model.save_pretrained(out / "model")
                tok.save_pretrained(out / "model")
            else:
                shutil.copytree(source, out / "model")
            return {"tokens_per_epoch": 100}

        return artifacts.build("stage", {"member": name}, produce, [], root=tmp_path)

    members = [member(trained / "model", "ours"), member(None, "other")]
    refs = [m.ref for m in members]
    art = artifacts.build(
        "ensemble",
        {"members": refs},
        partial(ensemble.write, members, "uniform", tok),
        refs,
        root=tmp_path,
    )
    argv = [str(art.path / "ensemble.json"), "--code", str(trained / "ours")]
    argv += ["--held-out", str(trained / "theirs"), "--out", str(tmp_path / "report")]
    assert main(["audit", *argv, "--prompts", "5", "--sequences", "20"]) == 0
    report = json.loads((tmp_path / "report" / "audit.json").read_text())
    m = report["membership"]
    assert m["code"]["loss"] < m["held_out"]["loss"]
    shutil.rmtree(members[1].path)  # a member removed: a clear error, not a traceback
    assert main(["audit", *argv]) == 2
    assert "is not in the cache" in capsys.readouterr().err
