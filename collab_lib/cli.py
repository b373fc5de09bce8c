"""``python -m collab_lib``: run steps, print tables, show the cache, build the book."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from collab_lib import calibration, cost, pipeline
from collab_lib.book import SETTINGS_FILE, build_book, build_dir, publish
from collab_lib.config import UserError, load_config, settings_digest, settings_text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _chance(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e-3:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.001), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m collab_lib",
        description="Reproduce 'Promise and Peril of Collaborative Code Generation Models'.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_profile(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--profile", default="default", help="tiny, default, gpu, paper or a .yml path"
        )
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a profile value, e.g. --set seed=3 "
            "--set datasets.organizations.Google.size_mb=2 (repeatable)",
        )

    def with_yes(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--yes",
            action="store_true",
            help=f"start even if the estimate exceeds {cost.HOURS_TO_ASK:g} hours (see `plan`)",
        )

    def with_ray(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--ray-address",
            metavar="ADDRESS",
            help="run the training jobs and each model's pieces on a Ray cluster: auto (the one "
            "this machine belongs to) or HOST:PORT; "
            "the cache must be shared storage (README: 'On a Ray cluster')",
        )
        sp.add_argument(
            "--ray-cpus",
            type=_positive,
            default=1,
            help="CPUs (torch threads) per task: a training job or a model's piece",
        )

    def with_window(sp: argparse.ArgumentParser) -> None:
        """The clone detector's window: ``clones`` and ``psi`` normalize and match alike."""
        sp.add_argument("--min-lines", type=_positive, default=6, help="shortest block (lines)")
        # clones.MODES, not imported here: numba's import would slow every command by 0.2 s
        sp.add_argument("--mode", choices=["simian", "strict"], default="simian")

    steps = ", ".join(f"{n} ({s.description})" for n, s in pipeline.STEPS.items())
    sp = sub.add_parser(
        "run",
        help="run a step (cached artifacts are reused)",
        description=f"Steps: {steps}; 'all' runs every step in order.",
    )
    sp.add_argument("step", choices=[*pipeline.STEPS, "all"])
    sp.add_argument("--force", action="store_true", help="recompute even if cached")
    with_yes(sp)
    with_ray(sp)
    with_profile(sp)

    sp = sub.add_parser("table", help="print a produced table as CSV")
    sp.add_argument("name", help="e.g. table2, table3, table4, funnel, skipped")
    with_profile(sp)

    sp = sub.add_parser("status", help="what is cached and what would run")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument(
        "--settings",
        action="store_true",
        help="print the resolved settings (YAML) that `book` hands its chapters",
    )
    with_profile(sp)

    sp = sub.add_parser(
        "plan",
        help="the cost of a run before it starts: each step's work and time",
        description="Each step's work (tokens to train, completions to sample, programs to "
        "run, sequences and tokens to score) and its time on this machine, from a short "
        "calibration of its throughput at the profile's model shape (cached), or on another "
        "machine (--machine). Steps whose artifacts are cached cost nothing. README: 'The "
        "cost of a run'.",
    )
    sp.add_argument(
        "--machine",
        metavar="NAME",
        help=f"here (default: calibrated), a preset ({', '.join(calibration.PRESETS)}) or a "
        "calibration file written on another machine (<artifacts>/calibration/*.json)",
    )
    sp.add_argument("--all", action="store_true", help="the whole run, cached steps too")
    sp.add_argument("--recalibrate", action="store_true", help="measure this machine again")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    with_profile(sp)

    sp = sub.add_parser("models", help="each trained model's name and checkpoint directory")
    sp.add_argument("--seed", type=int, help="the models of this seed (same as --set seed=S)")
    with_profile(sp)

    sp = sub.add_parser(
        "federation",
        help="set up a federated model on Flower's deployment engine and print the commands",
        description="Write the Flower app, each organization's training data, FLWR_HOME and "
        "the run's TLS certificates and SuperNode keys into DIR, and print the commands: one "
        "SuperLink (TLS, registered SuperNodes only), the registration of each organization's "
        "key, one SuperNode per organization (each reads only its own data), then `flwr run`. "
        "README: 'Across machines'.",
    )
    sp.add_argument("model", help="Federated_Avg_FMG, Federated_Yogi_FMG, Federated_Avg_MG, ...")
    sp.add_argument("--dir", required=True, help="working directory for the run")
    sp.add_argument(
        "--host",
        default="127.0.0.1",
        help="the SuperLink's address, as the SuperNodes reach it (its certificate names it)",
    )
    sp.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS, no SuperNode authentication: anyone who reaches the port can join",
    )
    with_profile(sp)

    sp = sub.add_parser(
        "clones",
        help="audit: Type-1 clone blocks of a file or tree, within it or found in a corpus",
        description="Print the clone blocks of QUERY_PATH (a .py file or a directory) found in "
        "CORPUS_PATH, or within QUERY_PATH without --against. Lines are counted as Simian counts "
        "them (blank and comment-only lines do not count); the ratio is the paper's Eq. 1.",
    )
    sp.add_argument("query", metavar="QUERY_PATH")
    sp.add_argument("--against", metavar="CORPUS_PATH", help="a .py file or directory to search")
    with_window(sp)
    sp.add_argument("--slash-comments", action="store_true", help="Simian's `//` comment quirk")
    sp.add_argument("--json", action="store_true", help="print one JSON object")

    sp = sub.add_parser(
        "audit",
        help="check any causal language model against your own code, locally (a report)",
        description="Run the study's memorization measures on MODEL (a directory that "
        "from_pretrained loads: ours or anyone's; or the ensemble.json that `models` prints "
        "for the study's ensemble) and on code you own (DIR): the paper's "
        "verbatim metric on your functions' prompts with the longest reproduced blocks, "
        "k-extractability, membership signals (AUC against --held-out code the model never "
        "saw) and the exposure of canaries you planted. Writes audit.json and audit.html "
        "into --out. README: 'Auditing a model against your code'.",
    )
    sp.add_argument("model", metavar="MODEL")
    sp.add_argument("--code", required=True, metavar="DIR", help="code your organization owns")
    sp.add_argument("--held-out", metavar="DIR", help="code of the same kind the model never saw")
    sp.add_argument(
        "--canaries", metavar="FILE", help="JSON list of planted {prefix, secret, format}"
    )
    sp.add_argument("--out", default="audit", metavar="DIR", help="where the report goes (audit/)")
    sp.add_argument(
        "--prompts", type=_positive, default=100, help="function prompts to complete (100)"
    )
    sp.add_argument(
        "--sequences", type=_positive, default=200, help="k-extractability windows (200)"
    )
    sp.add_argument("--seed", type=int, default=0)

    sp = sub.add_parser(
        "psi",
        help="remove the clones your organization shares with others, without sharing code",
        description="Private set intersection of the clone detector's windows (README: "
        "'Removing shared code without sharing it'). Every organization, on its own machine: "
        "1. `psi request` and send the request file to every other organization; 2. `psi "
        "answer` each request it receives and send each answer back; 3. `psi remove` with the "
        "answers to its request: a copy of its code without the shared windows. Only blinded "
        "fingerprints and set sizes travel; STATE holds secret keys: keep it.",
    )
    psi_sub = sp.add_subparsers(dest="role", required=True)
    roles = {
        "request": "step 1: write your blinded windows, to send to every other organization",
        "answer": "step 2: answer another organization's request (send the answer back)",
        "remove": "step 3: from the answers to your request, copy your code without the "
        "windows you share",
    }
    for role, text in roles.items():
        rp = psi_sub.add_parser(role, help=text, description=text)
        rp.add_argument("--code", required=True, metavar="DIR", help="your organization's code")
        rp.add_argument("--state", required=True, metavar="DIR", help="private: keys, records")
        with_window(rp)
        if role == "request":
            rp.add_argument("--out", required=True, metavar="FILE", help="the request to send")
        if role == "answer":
            rp.add_argument("--request", required=True, metavar="FILE", help="theirs")
            rp.add_argument("--out", required=True, metavar="FILE", help="the answer to send")
            rp.add_argument("--fpr", type=_chance, default=1e-9, help="false-positive chance")
        if role == "remove":
            rp.add_argument(
                "--answer",
                action="append",
                required=True,
                metavar="ORG=FILE",
                help="an organization's answer to your request (one per organization)",
            )
            rp.add_argument("--out", required=True, metavar="DIR", help="deduplicated copy")
            rp.add_argument(
                "--owner",
                action="store_true",
                help="keep a shared window where you come first in --order (default: drop)",
            )
            rp.add_argument("--me", default="", help="your name in --order (with --owner)")
            rp.add_argument("--order", default="", help="A,B,C: agreed order (with --owner)")

    sp = sub.add_parser(
        "evaluate",
        help="score anyone's samples on HumanEval / HumanEval+ in the sandbox (pass@k)",
        description="SAMPLES.jsonl in EvalPlus's format: one JSON object per line with "
        "task_id and either solution (a whole program) or completion (appended to the "
        "task's prompt); any tasks, several samples per task, any order. Each runs in the "
        "sandbox of the profile's evaluation settings (README: 'RQ1').",
    )
    sp.add_argument("samples", metavar="SAMPLES.jsonl")
    sp.add_argument(
        "--benchmark",
        choices=["humaneval", "humaneval+"],
        help="default: the profile's evaluation.benchmark",
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    with_profile(sp)

    sp = sub.add_parser(
        "export",
        help="write a run's tables, curves and manifests (no weights, no code) to one archive",
        description="Every artifact behind the profile's book, all seeds, into FILE (.tar.gz). "
        "On another machine, `import FILE` then `book --profile P --no-run` builds its book.",
    )
    sp.add_argument("file", metavar="FILE", help="e.g. gpu-run.tar.gz")
    with_profile(sp)

    sp = sub.add_parser("import", help="put an export's results into the local cache")
    sp.add_argument("file", metavar="FILE")

    sp = sub.add_parser("book", help="run the steps, execute the notebooks, build the HTML book")
    sp.add_argument("--no-run", action="store_true", help="do not run missing steps first")
    sp.add_argument(
        "--to",
        metavar="DIR",
        help="also copy the built site to DIR (a static site: any web server, GitHub Pages)",
    )
    with_yes(sp)
    with_ray(sp)
    with_profile(sp)
    return p


def _audit_model(args) -> int:
    """``audit``: the report's summary on stdout, the report's files beside it."""
    from collab_lib.audit import AuditSettings, run_audit, summary, write_report

    settings = AuditSettings(prompts=args.prompts, sequences=args.sequences, seed=args.seed)
    report = run_audit(args.model, args.code, args.held_out, args.canaries, settings)
    paths = write_report(report, args.out)
    summary(report).to_csv(sys.stdout, index=False)
    print(f"report: {paths[1]} (and {paths[0].name}, aggregates to share if you choose)")
    return 0


def _psi(args) -> int:
    """``psi request|answer|remove``: one organization's side, its result on stdout."""
    from collab_lib import psi
    from collab_lib.clones import CloneOptions

    party = psi.Party(Path(args.code), Path(args.state), CloneOptions(args.min_lines, args.mode))
    if args.role == "request":
        result = psi.party_request(party, Path(args.out))
    elif args.role == "answer":
        result = psi.party_answer(party, Path(args.request), Path(args.out), args.fpr)
    else:
        answers = {}
        for item in args.answer:
            org, sep, path = item.partition("=")
            if not sep or not org:
                raise UserError(f"--answer {item!r}: write ORG=FILE")
            answers[org] = Path(path)
        order = [o for o in args.order.split(",") if o]
        removal = "owner" if args.owner else "drop"
        result = psi.party_remove(party, answers, Path(args.out), removal, args.me, order)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "clones":
        return _audit(args)
    try:
        if args.command == "import":
            return _import(Path(args.file))
        if args.command == "audit":
            return _audit_model(args)
        if args.command == "psi":
            return _psi(args)
        if getattr(args, "seed", None) is not None:
            args.overrides.append(f"seed={args.seed}")
        cfg = load_config(args.profile, args.overrides)
        if args.command == "run":
            _run_steps(cfg, args, args.step)
            print(f"done: {args.step} ({cfg.profile}); see `{cfg.command('status')}`")
        elif args.command == "table":
            pipeline.table(args.name, cfg).to_csv(sys.stdout, index=False)
        elif args.command == "plan":
            return _print_plan(cfg, args)
        elif args.command == "models":
            return _print_models(cfg)
        elif args.command == "federation":
            return _print_federation(cfg, args)
        elif args.command == "evaluate":
            return _evaluate(cfg, args)
        elif args.command == "status":
            _print_status(cfg, as_json=args.json, settings=args.settings)
        elif args.command == "export":
            return _export(cfg, Path(args.file))
        elif args.command == "book":
            if not args.no_run:
                _run_steps(cfg, args, "book")
            index = build_book(cfg, run_steps=False)
            settings = build_dir(cfg) / SETTINGS_FILE
            print(f"book built: {index}\nits settings ({settings_digest(cfg)}): {settings}")
            if args.to:
                print(f"site written: {publish(index.parent, Path(args.to))}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "interrupted: finished artifacts are kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def _run_steps(cfg, args: argparse.Namespace, step: str) -> None:
    """``run`` and ``book``: ask first where the estimate is hours, then run the steps here or
    with their training jobs and each model's pieces on a Ray cluster."""
    force = getattr(args, "force", False)
    if args.ray_address is None:
        ask = _ask if sys.stdin.isatty() else None
        cost.confirm(cfg, pipeline.step_names(step), args.yes, ask, force=force)
        pipeline.run(step, cfg, force=force)
        return
    if force:
        raise UserError("--force and --ray-address: force a step here, without the cluster")
    from collab_lib import cluster

    # no estimate: this machine's throughput says nothing of the cluster's (`plan --machine`)
    cluster.run(step, cfg, args.ray_address, args.ray_cpus)


def _ask(question: str) -> str:
    """The user's answer at a terminal; an end of input is a no."""
    try:
        return input(question)
    except EOFError:
        return ""


def _print_plan(cfg, args: argparse.Namespace) -> int:
    """``plan``: each step's work and minutes, what would run, and on which machine."""
    f = cost.facts(cfg, cost.data_plans(cfg))  # before a calibration: it may say what to run
    if args.recalibrate:
        calibration.calibrate(cfg, again=True)
    tp = calibration.throughput(cfg, args.machine)
    works = cost.estimate(cfg, tp, f) if args.all else cost.pending(cfg, tp, f)
    frame = cost.table(works)
    if args.json:
        out = {"machine": asdict(tp), "sizes_from": f.source, "steps": frame.to_dict("records")}
        print(json.dumps(out, indent=1))
        return 0
    print(cost.render(frame))
    total = frame.iloc[-1]["minutes"]
    what = "the whole run" if args.all else "what would run (cached steps cost nothing)"
    print(f"{what}: about {cost.duration(total * 60)} on {tp.machine}")
    sizes = "the built datasets" if f.source == "datasets" else "each organization's size_mb"
    print(f"counted from {sizes}; throughput {tp.measured or 'measured'}: {calibration.rates(tp)}")
    return 0


def _print_models(cfg) -> int:
    """``name<TAB>directory`` of every trained model (``from_pretrained`` loads the directory);
    for an ensemble, which has no weights of its own, the file naming its members and weights
    (``collab_lib.scoring.load_model`` of its artifact loads it)."""
    from collab_lib import artifacts, collaboration

    keys = pipeline.planned_for("train", cfg)
    missing = []
    for spec in collaboration.roster(cfg):
        art = artifacts.load(*keys[spec.name])
        if art is None:
            missing.append(spec.name)
        else:
            where = art.path / "model"
            if not spec.trains:  # no weights of its own: its members file
                from collab_lib.ensemble import MEMBERS

                where = art.path / MEMBERS
            print(f"{spec.name}\t{where}")
    if missing:
        print(
            f"not built: {', '.join(missing)} (run `{cfg.command('run', 'train')}`)",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_federation(cfg, args: argparse.Namespace) -> int:
    """Prepare a deployment-engine run and print its commands, one process per line."""
    from collab_lib import collaboration

    planned = pipeline.planned_for("train", cfg)
    procs, env, out = collaboration.federation(
        cfg, planned, args.model, Path(args.dir), host=args.host, insecure=args.insecure
    )
    if args.insecure:
        print(
            "warning: --insecure: no TLS and no SuperNode authentication. Anyone who reaches "
            "the SuperLink's port can join the federation, receive the global model every "
            "round and send updates into it; use it only where no one else can connect.",
            file=sys.stderr,
        )
    print(f"# {args.model} on Flower's deployment engine; the ServerApp saves it to {out}")
    print("# start each line in its own shell (or machine), in this order; the register lines")
    print("# run once the SuperLink listens, each to its end, before the SuperNodes start:")
    for p in procs:
        print(p.shell(env))
    return 0


def _evaluate(cfg, args: argparse.Namespace) -> int:
    """``python -m collab_lib evaluate``: per-sample status and pass@k of a samples file."""
    from collab_lib import benchmarks, evaluation

    e = cfg.evaluation
    bench = benchmarks.load_benchmark(args.benchmark or e.benchmark, e.humaneval_plus_path)
    samples = benchmarks.read_samples(args.samples, bench)
    with evaluation.make_sandbox(cfg) as box:
        results = benchmarks.score(bench, samples, box)
        isolation = box.isolation
    scores = benchmarks.pass_at_k(results, evaluation.KS)
    if args.json:
        keep = ("task_id", "index", "passed", "status")
        print(
            json.dumps(
                {
                    "benchmark": bench.version,
                    "isolation": isolation,
                    "samples": [{k: r[k] for k in keep} for r in results],
                    "pass_at_k": scores,
                },
                indent=1,
            )
        )
        return 0
    for s, r in zip(samples, results, strict=True):
        detail = f" ({r['detail']})" if r["detail"] and r["status"] != "pass" else ""
        print(f"line {s['index'] + 1}\t{r['task_id']}\t{r['status']}{detail}")
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(r["passed"])
    print("task\tsamples\tpassed")
    for task, passed in per_task.items():
        print(f"{task}\t{len(passed)}\t{sum(passed)}")
    print(f"{bench.version}; isolation: {isolation}")
    print("  ".join(f"{k} {100 * v:.2f} %" for k, v in scores.items()))
    return 0


def _audit(args: argparse.Namespace) -> int:
    """``python -m collab_lib clones``: no profile, just paths."""
    from collab_lib import clones

    try:
        opts = clones.CloneOptions(args.min_lines, args.mode, args.slash_comments)
        query = clones.build_corpus(clones.read_tree(args.query), opts)
        if args.against:
            report = clones.CloneIndex.build(clones.read_tree(args.against), opts).query(query)
        else:
            report = clones.self_clones(query, opts)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0
    for b in report.blocks:
        print(
            f"{b.file}:{b.start}-{b.end} ({b.lines} lines) = "
            f"{b.source_file}:{b.source_start}-{b.source_end}"
        )
    print(
        f"{len(report.blocks)} blocks; {report.cloned_lines} of {report.counted_lines} counted "
        f"lines are inside a block ({100 * report.ratio:.2f} %)"
    )
    return 0


def _print_status(cfg, as_json: bool, settings: bool) -> None:
    if settings:
        print(settings_text(cfg), end="")
        return
    rows = pipeline.status(cfg)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    width = max((len(r["artifact"]) for r in rows), default=10)
    for r in rows:
        print(f"{r['step']:<10} {r['artifact']:<{width}} {r['key']}  {r['state']}")
    todo = list(dict.fromkeys(r["step"] for r in rows if r["state"] != "cached"))
    print("would run: " + (", ".join(todo) if todo else "nothing (everything is cached)"))
    if todo:
        print(f"its cost, step by step, before it runs: `{cfg.command('plan')}`")
    print(f"settings {settings_digest(cfg)}: `{cfg.command('status', '--settings')}` prints them")


def _export(cfg, path: Path) -> int:
    from collab_lib import exchange

    index = exchange.export_run(cfg, path)
    print(
        f"exported {len(index['artifacts'])} artifacts of profile {cfg.profile} (seeds "
        f"{', '.join(map(str, index['seeds']))}) to {path}: {index['bytes'] / 1e6:.1f} MB; "
        f"{index['left_home_bytes'] / 1e6:.1f} MB of weights and code stay here"
    )
    return 0


def _import(path: Path) -> int:
    from collab_lib import exchange

    index = exchange.import_run(path)
    where = index["machine"]
    on = where.get("gpu") or where.get("cpu")
    sets = "".join(f" --set {o}" for o in index["overrides"])
    print(
        f"imported {index['added']} artifacts ({index['already_here']} already here) of "
        f"profile {index['profile']}, run on {on} ({where.get('platform')}) at "
        f"{index['created_utc']}.\nBuild its book: python -m collab_lib book --profile "
        f"{index['profile']}{sets} --no-run"
    )
    return 0
