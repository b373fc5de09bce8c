"""Small display helpers for the notebooks: captions that tie a table to its artifact, figures."""

from __future__ import annotations

import html
import itertools
import json
import re

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from pandas.api.types import is_float_dtype

from collab_lib import artifacts, collaboration, datasets, paper
from collab_lib.config import Config


def source_line(art: artifacts.Artifact, cfg: Config, table: str | None = None) -> Markdown:
    """A "made by step X, artifact Y" line under a table or figure (showyourwork's tracing).
    Code spans, not ``<code>`` tags: Sphinx's smart quotes would turn the command's ``--``
    into an en dash, and the pasted command would fail."""
    reprint = f"; print it with `{cfg.command('table', table)}`" if table else ""
    return Markdown(
        f"<small>Made by step `{art.step}`, artifact `{art.key}` "
        f"(profile `{cfg.profile}`, seed {cfg.seed}){reprint}.</small>"
    )


def show_table(
    df: pd.DataFrame, art: artifacts.Artifact, cfg: Config, table: str | None = None
) -> None:
    """Display a table without its index, then the line that says where it came from; an
    empty or missing value shows as a dash (a blank cell reads as a rendering fault)."""
    if df.empty:
        display(Markdown("*No rows in this run.*"))
        display(source_line(art, cfg, table))
        return
    df = df.replace("", None)
    formats = {c: _number_format(df[c]) for c in df.columns if is_float_dtype(df[c])}
    style = df.style.hide(axis="index").format(precision=2, thousands=",", na_rep="—")
    display(style.format(formats, subset=list(formats), na_rep="—") if formats else style)
    display(source_line(art, cfg, table))


def _number_format(column: pd.Series):
    """A column of whole numbers (counts kept as floats beside a missing value) without
    decimals; otherwise two decimals, and two significant digits for a value under 0.01 (the
    paper's 0.004 % is not 0.00)."""
    values = column.dropna()
    if len(values) and (values == values.round()).all():
        return "{:,.0f}"

    def number(v: float) -> str:
        return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:,.2f}"

    return number


def beside_paper(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Pair each ``x`` column with its ``paper_x`` column under one heading: (x, ours|paper)."""
    pairs = [c for c in df.columns if f"paper_{c}" in df.columns]
    rest = [c for c in df.columns if c not in (*keys, *pairs) and not c.startswith("paper_")]
    out = pd.DataFrame({(k, ""): df[k] for k in keys})
    for c in pairs:
        out[(c, "ours")] = df[c]
        out[(c, "paper")] = df[f"paper_{c}"]
    for c in rest:
        out[(c, "ours")] = df[c]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def show_figure(fig: plt.Figure, art: artifacts.Artifact, cfg: Config) -> None:
    """Display a figure once (closing it, so the inline backend does not show it again)."""
    display(fig)
    plt.close(fig)
    display(source_line(art, cfg))


def funnel_figure(funnel: pd.DataFrame) -> plt.Figure:
    """Files left after each preprocessing stage, one line per organization."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for org, rows in funnel.groupby("organization", sort=False):
        ax.plot(rows["stage"], rows["files"], marker="o", label=org)
    ax.set_yscale("log")
    ax.set_ylabel("files (log scale)")
    ax.set_title("Preprocessing funnel per organization")
    ax.legend()
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def loc_density(table4: pd.DataFrame) -> pd.DataFrame:
    """Bytes per line of code, ours against the one the paper's Table 4 implies."""
    rows = []
    for _, r in table4.iterrows():
        ref = paper.TABLE4.get(r["organization"])
        raw_files, raw_mb = paper.RAW.get(r["organization"], (None, None))
        rows.append(
            {
                "organization": r["organization"],
                "bytes_per_loc": round(datasets.MB / r["loc_per_mb"], 1),
                "paper_bytes_per_loc": round(datasets.MB / ref[0], 1) if ref else None,
                "bytes_per_statement": round(datasets.MB / r["statements_per_mb"], 1),
                "bytes_per_file": r["bytes_per_file"],
                "paper_bytes_per_file": round(raw_mb * datasets.MB / raw_files) if raw_mb else None,
            }
        )
    return pd.DataFrame(rows)


def funnel_table(funnel: pd.DataFrame) -> pd.DataFrame:
    """The funnel as one row per organization, stages in pipeline order."""
    wide = funnel.pivot(index="organization", columns="stage", values="files")
    return wide[list(datasets.FUNNEL)].reset_index()


def skipped_table(skipped: pd.DataFrame) -> pd.DataFrame:
    """Files set aside, one row per reason, one column per organization."""
    wide = skipped.pivot(index="reason", columns="organization", values="files")
    return wide.fillna(0).astype(int).reset_index()


# free-text license fields and trove classifiers, as SPDX identifiers (first match wins)
_SPDX = (
    (r"^(mit\b|mit license)", "MIT"),
    (r"^apache[- ](2\.0|license.*2)", "Apache-2.0"),
    (r"^apache software license$", "Apache (version not stated)"),
    (r"^bsd[- ]3|bsd 3-clause", "BSD-3-Clause"),
    (r"^bsd[- ]2|bsd 2-clause", "BSD-2-Clause"),
    (r"^bsd license$", "BSD (version not stated)"),
    (r"^(psf-2\.0|python software foundation license)$", "PSF-2.0"),
)


def spdx(license_: str) -> str:
    """A license as its SPDX identifier where one is plain (``MIT License`` -> ``MIT``);
    a list of classifiers (``A, B``: the package offers either) maps each part, joined by
    ``OR``; an SPDX expression or anything else is kept as is."""
    text = str(license_).strip()
    if re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)+", text):
        return text  # already an SPDX expression
    parts = (
        [p.strip() for p in text.split(", ")] if ", " in text and "licensed" not in text else [text]
    )
    out = []
    for part in parts:
        low = part.lower()
        out.append(next((sid for rx, sid in _SPDX if re.search(rx, low)), part))
    return " OR ".join(dict.fromkeys(out))


def table2_summary(table2: pd.DataFrame) -> pd.DataFrame:
    """Per organization: our sources and licenses beside the paper's repositories (Table 2)."""
    rows = []
    for org, group in table2.groupby("organization", sort=False):
        repos, sample = paper.TABLE2.get(org, (None, None))
        rows.append(
            {
                "organization": org,
                "sources": len(group),
                "py_files": int(group["py_files"].sum()),
                "licenses": ", ".join(sorted({spdx(v) for v in group["license"]})),
                "paper_repositories": repos,
                "paper_sample_repositories": sample,
            }
        )
    return pd.DataFrame(rows)


def figure2(fig2: pd.DataFrame) -> plt.Figure:
    """Figure 2 of the paper: internal clone blocks and clone LOC per MB of each
    organization's own training code; vendored copies, if any, as grey hatched bars."""
    n_own = int((~fig2["vendored"]).sum())
    # a vendored row's label is "<organization>: vendored copies (...)"; the axis keeps it short
    labels = [
        r["organization"].partition(": ")[0] + "\nvendored" if r["vendored"] else r["organization"]
        for _, r in fig2.iterrows()
    ]
    fig, axes = plt.subplots(1, 2, figsize=(8 + 0.8 * (len(fig2) - n_own), 3))
    for ax, col, title in (
        (axes[0], "clone_blocks_per_mb", "Clone blocks per MB"),
        (axes[1], "clone_loc_per_mb", "Clone LOC per MB"),
    ):
        bars = ax.bar(labels, fig2[col])
        for i, (bar, vendored) in enumerate(zip(bars, fig2["vendored"], strict=True)):
            if vendored:
                bar.set(facecolor="#dddddd", edgecolor="#666666", hatch="//")
            else:
                bar.set_color(("#4c72b0", "#dd8452", "#55a868")[i % 3])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def figure2_note(fig2: pd.DataFrame) -> str:
    """This run's organizations by clone LOC per MB, beside the paper's most duplicated one
    (an organization's role in the findings comes from this run, not from its name)."""
    own = fig2[~fig2["vendored"]].sort_values("clone_loc_per_mb", ascending=False)
    ranked = " > ".join(f"{r.organization} {r.clone_loc_per_mb:,.0f}" for r in own.itertuples())
    org, blocks, loc = paper.FIGURE2_TOP
    text = (
        f"In this run, clone LOC per MB: {ranked}; the most duplicated is "
        f"{own['organization'].iloc[0]}. In the paper it is {org} (clone blocks {blocks:,.2f} and "
        f"clone LOC {loc:,.2f} per MB; its text gives no other organization's values)."
    )
    vendored = fig2[fig2["vendored"]]
    if len(vendored) and not vendored["clone_loc_per_mb"].any():
        text += " The vendored copies hold no internal clone, so their bars are empty."
    return text


def vendored_sources(summaries: dict[str, dict]) -> pd.DataFrame:
    """Which third-party modules each organization ships a vendored copy of."""
    rows = [
        {"organization": org, "vendored module": s["label"], "license": s["license"]}
        for org, summary in summaries.items()
        for s in summary["sources"]
        if s.get("vendored")
    ]
    return pd.DataFrame(rows, columns=["organization", "vendored module", "license"])


def loss_curves(curves: dict[str, dict]) -> plt.Figure:
    """Small multiples: the training loss per optimizer step of each setting's models (| marks
    the next organization of an incremental model), and of each federated model, every
    client's loss in its local epoch, per round."""
    from collab_lib.collaboration import DP, PSI, RQ3

    pair_panels = {RQ3: "RQ3 pair", PSI: "RQ3 pair, PSI-deduplicated", DP: "DP-SGD"}
    panels: dict[str, dict[str, dict]] = {}
    for name, c in curves.items():
        if c["kind"] == "rounds":
            panels[name] = {name: c}
        else:
            title = pair_panels.get(c.get("rq"), c.get("setting", "models"))
            panels.setdefault(title, {})[name] = c
    orgs = sorted(
        {o for c in curves.values() if c["kind"] == "rounds" for o in c["organization_loss"]}
    )
    colors = {o: f"C{i % 10}" for i, o in enumerate(orgs)}  # one colour per client, every panel
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    for ax, (title, group) in zip(axes.flat, panels.items(), strict=False):
        for name, c in group.items():
            if c["kind"] == "rounds":
                _client_losses(ax, c, colors)
            else:
                loss = smooth(c["step_loss"])
                (line,) = ax.plot(loss, lw=0.9, label=name)
                ends = c["stage_ends"][:-1]
                ax.plot(
                    ends,
                    [loss[e - 1] for e in ends],
                    "|",
                    ms=14,
                    mew=2,
                    zorder=3,
                    color=line.get_color(),
                )
                ax.set_xlabel("optimizer step (mean of 10)")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("training loss (nats per token)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def smooth(values: list[float], window: int = 10) -> list[float]:
    """Trailing mean over ``window`` steps (fewer at the start): a batch of 8 is noisy."""
    return pd.Series(values).rolling(window, min_periods=1).mean().tolist()


def _client_losses(ax, c: dict, colors: dict[str, str]) -> None:
    """One line per organization: its client's training loss in each round."""
    rounds = range(1, len(c["round_loss"]) + 1)
    for org in sorted(c["organization_loss"]):
        ax.plot(
            rounds, c["organization_loss"][org], marker="o", lw=0.9, label=org, color=colors[org]
        )
    ax.set_xlabel("round")
    ax.set_xticks(list(rounds))


def settings_table(cfg: Config, base: artifacts.Artifact) -> pd.DataFrame:
    """The model and training settings of a profile, as the book states them; the model's
    shape as the base model artifact saved it (a checkpoint brings its own, not the profile's
    ``model.n_layer`` ...)."""
    m, t = cfg.model, cfg.train
    shape = json.loads((base.path / "model" / "config.json").read_text())
    rounds = cfg.federated.rounds or t.epochs
    rows = [
        ("base model", f"{m.base} ({m.checkpoint or 'GPT-2 pretrained on the stdlib'})"),
        ("layers x width (heads)", f"{shape['n_layer']} x {shape['n_embd']} ({shape['n_head']})"),
        ("vocabulary / context", f"{shape['vocab_size']:,} / {m.context} tokens"),
        ("epochs (= federated rounds)", f"{t.epochs} ({rounds} round{'s' * (rounds != 1)})"),
        ("batch x accumulation", f"{t.batch_size} x {t.grad_accum} sequences"),
        (
            "AdamW lr, schedule, warm-up",
            f"{t.lr:g}, {t.schedule}{'' if t.schedule == 'constant' else ' to zero'}, "
            f"first {t.warmup_fraction:.0%} of each job's steps",
        ),
        ("FedYogi server rate, tau", _yogi(cfg)),
        ("seed", str(cfg.seed)),
    ]
    return pd.DataFrame(rows, columns=["Setting", "Value"])


def _yogi(cfg: Config) -> str:
    f = cfg.federated
    if f.tuned:
        return f"chosen by a sweep on held-out training files (eta {list(f.yogi_sweep.etas)})"
    return f"{f.yogi_eta:g}, {f.yogi_tau:g} (Flower's defaults: 0.01, 0.001)"


def note(text: str) -> None:
    """A computed sentence under a table, as the book's text."""
    display(Markdown(text))


def show_code(text: str) -> None:
    """Display Python source as a highlighted code block."""
    display(Markdown(f"```python\n{text}```"))


def perplexity_figure(table8: pd.DataFrame) -> plt.Figure:
    """Validation perplexity per model (log scale), coloured by group, the paper's beside."""
    colours = {
        "Baseline": "tab:gray",
        "Synchronous": "tab:blue",
        "Asynchronous": "tab:orange",
        "RQ3 pair": "tab:green",
    }
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(table8) + 1.2))
    y = range(len(table8))
    ax.barh(y, table8["perplexity"], color=[colours.get(g, "k") for g in table8["group"]])
    if "paper perplexity" in table8:
        ax.scatter(
            table8["paper perplexity"],
            y,
            marker="|",
            s=120,
            color="k",
            label="paper's value",
            zorder=3,
        )
        ax.legend(loc="lower right")
    ax.set_yticks(list(y), table8["model"])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("perplexity on the union of validation splits (log scale; lower is better)")
    for group, colour in colours.items():
        if (table8["group"] == group).any():
            ax.plot([], [], color=colour, linewidth=8, label=group)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def exposure_heatmap(exposure: pd.DataFrame, column: str = "extrapolated exposure - base"):
    """Models x organizations, one panel per repetition count: a canary measure (bits)."""
    if exposure.empty:
        return _message_figure(NO_CANARIES)
    counts = sorted(exposure["count"].unique())
    models = list(dict.fromkeys(exposure["model"]))
    orgs = list(dict.fromkeys(exposure["organization"]))
    values = exposure.pivot_table(index="model", columns=["count", "organization"], values=column)
    top = max(abs(values.to_numpy()).max(), 1e-9) if values.size else 1.0
    fig, axes = plt.subplots(
        1,
        len(counts),
        figsize=(2.6 * len(counts) + 1.6, 0.3 * len(models) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, count in zip(axes[0], counts, strict=True):
        grid = values[count].reindex(index=models, columns=orgs)
        image = ax.imshow(grid.to_numpy(), cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
        cells = grid.to_numpy()
        for i, j in itertools.product(range(len(models)), range(len(orgs))):
            v = cells[i, j]
            dark = pd.notna(v) and abs(v) > 0.6 * top
            ax.text(
                j,
                i,
                "–" if pd.isna(v) else f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
        ax.set_xticks(range(len(orgs)), orgs, rotation=30, ha="right")
        ax.set_title(f"{count} copies")
    axes[0][0].set_yticks(range(len(models)), models)
    fig.colorbar(image, ax=axes[0].tolist(), label=f"{column} (bits)", shrink=0.8)
    return fig


def membership_figure(auc: pd.DataFrame) -> plt.Figure:
    """ROC AUC of each signal per model and organization, with its interval: filled where
    the model was trained on that organization (members should score higher), hollow where
    not (0.5 expected)."""
    if auc.empty:
        return _message_figure("no organization has both training and validation samples")
    signals = list(dict.fromkeys(auc["signal"]))
    models = list(dict.fromkeys(auc["model"]))
    orgs = list(dict.fromkeys(auc["organization"]))
    colours = dict(zip(orgs, itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])))
    fig, axes = plt.subplots(
        1,
        len(signals),
        figsize=(3.2 * len(signals) + 1.8, 0.32 * len(models) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, signal in zip(axes[0], signals, strict=True):
        part = auc[auc["signal"] == signal]
        for k, org in enumerate(orgs):
            rows = part[part["organization"] == org]
            y = rows["model"].map(models.index) + (k - (len(orgs) - 1) / 2) * 0.22
            err = [rows["auc"] - rows["low"], rows["high"] - rows["auc"]]
            ax.errorbar(rows["auc"], y, xerr=err, fmt="none", ecolor=colours[org], alpha=0.5)
            for trained, face in ((True, colours[org]), (False, "white")):
                pick = rows["trained on"] == trained
                ax.scatter(
                    rows["auc"][pick],
                    y[pick],
                    s=22,
                    facecolors=face,
                    edgecolors=colours[org],
                    zorder=3,
                    label=f"{org}" if trained else None,
                )
        ax.axvline(0.5, color="k", linewidth=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_title(signal)
        ax.set_xlabel("ROC AUC, training vs validation samples")
    axes[0][0].set_yticks(range(len(models)), models)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(
        title="trained on (filled)",
        fontsize=7,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )  # beside, never over a point
    fig.tight_layout()
    return fig


def incremental_positions(cfg: Config) -> pd.DataFrame:
    """model, organization, position (1 = trained on first) of every incremental model on
    all organizations (not the RQ3 pair's)."""

    return pd.DataFrame(
        [
            {"model": s.name, "organization": org, "position": i}
            for s in collaboration.roster(cfg)
            if s.setting == "incremental" and s.main
            for i, org in enumerate(s.orgs, start=1)
        ]
    )


def order_effects(
    cfg: Config, values: pd.DataFrame, column: str, label: str, log: bool = False
) -> plt.Figure:
    """Incremental order effects: one panel per organization, each incremental model's
    ``column`` on that organization against the organization's position in its order (the
    last is what the model saw most recently), the mean per position joined by a line."""
    data = incremental_positions(cfg).merge(
        values[["model", "organization", column]], on=["model", "organization"]
    )
    orgs = list(dict.fromkeys(data["organization"]))
    fig, axes = plt.subplots(
        1, len(orgs), figsize=(2.6 * len(orgs) + 0.8, 3.0), sharey=True, squeeze=False
    )
    for ax, org in zip(axes[0], orgs, strict=True):
        part = data[data["organization"] == org]
        ax.scatter(part["position"], part[column], s=18, color="tab:orange", zorder=3)
        for model, x, y in zip(part["model"], part["position"], part[column], strict=True):
            ax.annotate(
                model.split("_", 1)[-1],
                (x, y),
                fontsize=6,
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
            )  # the order, e.g. F2M2G
        means = part.groupby("position")[column].mean()
        ax.plot(means.index, means.to_numpy(), color="k", linewidth=1)
        ax.set_title(org)
        ax.set_xticks(sorted(part["position"].unique()))
        if log:
            ax.set_yscale("log")
    axes[0][0].set_ylabel(label)
    fig.supxlabel(
        "the organization's position in the incremental order (last: trained on most recently)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def perplexity_order_effects(cfg: Config, by_org: pd.DataFrame) -> plt.Figure:
    """:func:`order_effects` of the perplexity on each organization's validation split."""
    orgs = [o.name for o in cfg.datasets.organizations]
    long = by_org.melt(
        id_vars="model", value_vars=orgs, var_name="organization", value_name="perplexity"
    )
    return order_effects(cfg, long, "perplexity", "validation perplexity (log scale)", log=True)


NO_CANARIES = (
    "no canaries planted in this run (canaries.enabled is false, or no organization holds one)"
)


def _message_figure(text: str) -> plt.Figure:
    """A figure that says why there is nothing to plot (the page keeps its layout)."""
    fig, ax = plt.subplots(figsize=(8, 0.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    return fig


def exposure_order_effects(cfg: Config, exposure: pd.DataFrame) -> plt.Figure:
    """:func:`order_effects` of canary exposure over the base model's, mean over counts."""
    if exposure.empty:
        return _message_figure(NO_CANARIES)
    column = "extrapolated exposure - base"
    mean = exposure.groupby(["model", "organization"], as_index=False)[column].mean()
    return order_effects(cfg, mean, column, "canary exposure - base (bits)")


# key tables and the columns shown as mean ± spread when a profile runs several seeds
ACROSS_SEEDS = {
    "table8": (["model"], ["perplexity", "pass@1 (%)", "pass@10 (%)"]),
    "table10": (["model"], ["memorized lines", "ratio (%)"]),
    "exposure": (["model", "organization", "count"], ["extrapolated exposure - base"]),
    "table11": (["model"], ["memorized lines", "ratio (%)"]),
    "membership_auc": (["model", "organization", "signal"], ["auc"]),
}


def across_seeds(cfg: Config, name: str) -> pd.DataFrame:
    """A key table's values as "mean ± standard deviation" over the profile's seeds (every
    seed's table read from the cache), keyed as :data:`ACROSS_SEEDS` says."""
    from collab_lib import pipeline

    keys, values = ACROSS_SEEDS[name]
    frames = [pipeline.table(name, cfg.with_seed(s)) for s in cfg.run_seeds]
    both = pd.concat(frames, ignore_index=True)
    values = [v for v in values if v in both]
    groups = both.groupby(keys, sort=False)[values]
    mean, sd = groups.mean(), groups.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in values:
        out[c] = [
            "—" if pd.isna(m) else f"{m:.3g} ± {0 if pd.isna(d) else d:.2g}"
            for m, d in zip(mean[c], sd[c], strict=True)
        ]
    return out.reset_index()


def show_across_seeds(cfg: Config, name: str) -> None:
    """The key table across seeds, or with one seed the sentence that says how to get it."""
    seeds = cfg.run_seeds
    if len(seeds) < 2:
        note(
            f"One seed ({seeds[0]}): the values above are that seed's. With several (profile "
            f"key `seeds`, e.g. `--set 'seeds=[0,1,2]'`) this section shows each value's "
            f"mean ± standard deviation across them."
        )
        return
    display(across_seeds(cfg, name).style.hide(axis="index"))
    display(
        Markdown(
            f"<small>Mean ± standard deviation over {len(seeds)} seeds "
            f"({', '.join(map(str, seeds))}); print each seed's with "
            f"`{cfg.command('table', name)} --set seeds=null --set seed=S`."
            "</small>"
        )
    )


def memorized_examples(art: artifacts.Artifact) -> None:
    """Each memorized block, collapsed: the generated text beside the training source (an
    export never carries them: they are an organization's code)."""
    try:
        examples = art.table("memorized")
    except artifacts.ImportedWithoutFile:
        display(
            Markdown(
                "*This run was imported: its memorized code stayed on the machine "
                "that ran it (an export carries no organization's code).*"
            )
        )
        return
    if examples.empty:
        display(Markdown("*No completion holds a memorized block at this scale.*"))
        return
    for r in examples.itertuples():
        display(
            Markdown(
                f"<details><summary>{html.escape(r.model)}: {r.lines} lines of "
                f"{html.escape(r.organization)}'s <code>{html.escape(r.source_file)}</code>, lines "
                f"{r.source_start}-{r.source_end}</summary>\n\nGenerated:\n\n```python\n"
                f"{r.generated}```\n\nTraining source:\n\n```python\n{r.source}```\n\n</details>"
            )
        )


def findings_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per finding: the claim, the paper's statistic and ours with its interval,
    each in its unit (ours is on another scale where the paper's metric found nothing), and
    the verdict."""

    def ours(r) -> str:
        if pd.isna(r["estimate"]):
            return "not testable here"
        return f"{r['estimate']:.3g} {r['unit']} [{r['low']:.3g}, {r['high']:.3g}]"

    return pd.DataFrame(
        {
            "finding": table["finding"],
            "claim": table["claim"],
            "paper": [f"{r['paper value']:.3g} {r['paper unit']}" for _, r in table.iterrows()],
            "ours [interval]": [ours(r) for _, r in table.iterrows()],
            "verdict": table["verdict"],
        }
    )


def finding_cards(table: pd.DataFrame) -> None:
    """Per finding: the claim and the paper's numbers, then the measure, statistic and rule
    (stated before any number of ours), then our estimate, the verdict and why."""
    for _, r in table.iterrows():
        seeds = f"{int(r['seeds'])} seed" + ("s" if r["seeds"] != 1 else "")
        ours = (
            "—"
            if pd.isna(r["estimate"])
            else (
                f"{r['estimate']:.3g} {r['unit']}, interval [{r['low']:.3g}, {r['high']:.3g}]"
                + (
                    ""
                    if pd.isna(r["seed spread"])
                    else f", spread across seeds {r['seed spread']:.3g}"
                )
            )
        )
        theirs = (
            ""
            if pd.isna(r["paper value"])
            else f" (its statistic: {r['paper value']:.3g} {r['paper unit']})"
        )
        display(
            Markdown(
                f"### Finding {r['finding']}: {r['claim']}\n\n"
                f"- **The paper:** {r['paper']}{theirs}\n"
                f"- **Measure:** {r['measure']}\n"
                f"- **Statistic:** {r['statistic']}\n"
                f"- **Rule:** {r['rule']}\n"
                f"- **Ours ({seeds}):** {ours}\n"
                f"- **Verdict: {r['verdict']}.** {r['why']}\n"
            )
        )


SETTING_COLOURS = {
    "single": "tab:gray",
    "centralized": "tab:red",
    "federated": "tab:blue",
    "incremental": "tab:green",
    "ensemble": "tab:purple",
}


def memorization_axis(curves: pd.DataFrame) -> tuple[str, str]:
    """The curves' memorization column and its label: the paper's verbatim metric wherever it
    found a memorized line, else canary exposure over the base model's, else (no canaries
    planted) k-extractability's excess."""
    if (curves["memorized lines (%)"].fillna(0) > 0).any():
        return "memorized lines (%)", "memorized lines (%, the paper's metric)"
    if curves["exposure - base"].notna().any():
        return "exposure - base", "canary exposure over the base model (bits)"
    column = "matched, train - validation (tokens)"
    return column, "k-extractability: tokens matched, train - validation"


def tradeoff_figure(curves: pd.DataFrame, models: list[str] | None = None) -> plt.Figure:
    """Left: every setting's curve in the effectiveness-memorization plane, from the base
    model (the shared start) through each epoch (round), the last checkpoint ringed; with
    ``models`` (centralized and federated), those alone and, dotted, the perplexity at which
    finding 5 compares them. Right, for orientation: the paper's single points (Table 8's
    perplexity, Table 10's ratio)."""
    y, label = memorization_axis(curves)
    if models is None:
        fig, (ax, ref) = plt.subplots(1, 2, figsize=(11, 4.4), width_ratios=[3, 2])
        _paper_points(ref)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.4))
    if "rq" in curves:  # the DP twins have a chapter of their own
        curves = curves[curves["rq"] != collaboration.DP]
    for name, rows in curves.groupby("model", sort=False):
        if models is not None and name not in models:
            continue
        setting = rows["setting"].iloc[0]
        faint = setting in ("incremental", "single") and models is None
        style = {"alpha": 0.45, "linewidth": 1} if faint else {"alpha": 0.9, "linewidth": 1.8}
        _curve(ax, rows, y, None if faint else name, SETTING_COLOURS.get(setting, "black"), style)
    if models is not None:  # finding 5's levels: the lowest perplexity both curves reach
        best = curves.groupby("model")["validation perplexity"].min()
        setting = curves.drop_duplicates("model").set_index("model")["setting"]
        central = [m for m in models if setting.get(m) == "centralized"]
        for m in models:
            if setting.get(m) == "federated" and central:
                ax.axvline(max(best[m], best[central[0]]), color="tab:blue", linestyle=":")
    _plane(ax, curves, y, label, "This run: every checkpoint (★ the base model)")
    for setting, colour in SETTING_COLOURS.items():
        if setting in set(curves["setting"]):
            ax.plot([], [], color=colour, label=setting)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _curve(ax, rows: pd.DataFrame, y: str, name: str | None, colour: str, style: dict) -> None:
    """One model's checkpoints in the plane, the last ringed and (``name``) labelled."""
    x = rows["validation perplexity"]
    ax.plot(x, rows[y], marker="o", markersize=3, color=colour, **style)
    last = rows.iloc[-1]
    ax.scatter(last["validation perplexity"], last[y], s=60, facecolors="none", color=colour)
    if name:
        xy = (last["validation perplexity"], last[y])
        ax.annotate(name, xy, fontsize=7, xytext=(4, 2), textcoords="offset points")


def _plane(ax, curves: pd.DataFrame, y: str, label: str, title: str) -> None:
    """The base model's star, the log perplexity axis and the labels of the plane."""
    base = curves[curves["point"] == 0].iloc[0]
    ax.scatter(base["validation perplexity"], base[y], marker="*", s=120, color="black", zorder=3)
    _log_perplexity_axis(ax)
    ax.set_xlabel("validation perplexity (log scale; better to the right)")
    ax.set_ylabel(label)
    ax.set_title(title)


def _log_perplexity_axis(ax) -> None:
    """Log scale, better (lower) perplexity to the right, plain numbers as tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _paper_points(ax) -> None:
    """The paper's models as single points: Table 8's perplexity, Table 10's ratio."""
    for name, ratio in paper.TABLE10.items():
        setting = name.split("_")[0].lower()
        ppl = paper.TABLE8[name][0]
        ax.scatter(ppl, ratio, color=SETTING_COLOURS.get(setting, "black"), s=25)
        ax.annotate(
            name.split("_", 1)[1],
            (ppl, ratio),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    _log_perplexity_axis(ax)
    ax.set_xlabel("perplexity (Table 8, log scale)")
    ax.set_ylabel("memorized lines (%, Table 10)")
    ax.set_title("The paper: one point per model")


def tradeoff_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Findings 2 (effectiveness) and 5 (memorization) side by side: the trade-off the
    paper names, each with its verdict and what stands beside it."""
    rows = table[table["finding"].isin([2, 5])]
    return findings_summary(rows).assign(why=rows["why"].to_numpy())


# --------------------------------------------------------------------------- beyond the paper


def psi_effect(
    cfg: Config,
    table8: pd.DataFrame,
    table11: pd.DataFrame,
    blocks: pd.DataFrame,
    exposure: pd.DataFrame,
) -> pd.DataFrame:
    """Each PSI model beside its plain twin (and the base model): what it keeps of the shared
    blocks (Table 11's ratio; the loss of a block's second half given its first), the pair's
    canaries' exposure over the base model's (RQ2; canaries are no shared code, so removal
    should leave it), and its validation perplexity (Table 8)."""
    from collab_lib import datasets, psi
    from collab_lib.collaboration import BASE

    pair = exposure[exposure["organization"].isin(datasets.rq3_pair(cfg))]
    weighted = pair.assign(w=pair["extrapolated exposure - base"] * pair["canaries"])
    sums = weighted.groupby("model")[["w", "canaries"]].sum()
    bits = (sums["w"] / sums["canaries"]).to_dict() if len(sums) else {}
    ppl = dict(zip(table8["model"], table8["perplexity"], strict=False))
    ratio = dict(zip(table11["model"], table11["ratio (%)"], strict=False))
    sums = blocks.groupby("model")[["loss_sum", "tokens"]].sum()
    loss = (sums["loss_sum"] / sums["tokens"]).to_dict()
    rows = []
    for name, data in [(BASE, "none")] + [
        pair
        for twins in psi.psi_models(cfg)
        for pair in zip(twins, ("all", "PSI-deduplicated"), strict=True)
    ]:
        rows.append(
            {
                "model": name,
                "trained on": data,
                "Table 11 ratio (%)": ratio.get(name),
                "shared blocks' loss (nats/token)": loss.get(name),
                "pair's canary exposure - base (bits)": bits.get(name),
                "validation perplexity": ppl.get(name),
            }
        )
    return pd.DataFrame(rows)


def psi_note(art: artifacts.Artifact) -> str:
    """What this run's PSI did, in one paragraph: the removal rule, accuracy, cost."""
    m = art.metrics
    rule = {
        "drop": "every organization cut its copies of every window it shares",
        "owner": "an organization kept a shared window where it is the first holder in the "
        "profile's order, and the others cut theirs",
    }[m["removal"]]
    return (
        f"In this run {rule}. Against the centralized detector the lowest recall over the "
        f"pairs is {m['recall']:.3g} with {m['false_positive_lines']} false-positive lines; "
        f"the whole protocol sent {m['bytes'] / 1e6:.2f} MB and took {m['seconds']:.1f} s of "
        "computation, all organizations together."
    )


# --------------------------------------------------------------------------- beyond: trade-off


def dp_label(row: pd.Series) -> str:
    """How a figure names a model of the privacy table: its name, and its ε where it has one."""
    eps = row["epsilon (accountant)"]
    return (
        row["Model"]
        if not pd.notna(eps) or eps == float("inf")
        else f"{row['Model']} (ε={eps:.2g})"
    )


def privacy_models(curves: pd.DataFrame) -> list[str]:
    """The models the trade-off chapter compares: the centralized and FedAvg models on all
    organizations, the ensemble and every DP twin, as the curves table lists them."""
    first = curves.drop_duplicates("model")
    keep = (
        (first["rq"] == collaboration.DP)
        | first["setting"].isin(["centralized", "ensemble"])
        | first["model"].str.startswith("Federated_Avg_")
    )
    return list(first.loc[keep, "model"])


def privacy_effect(curves: pd.DataFrame, privacy: pd.DataFrame) -> pd.DataFrame:
    """Each compared model at its last checkpoint: validation perplexity and memorization
    (canary exposure over the base model's, k-extractability) beside its ε from the
    accountant and from the audit."""
    names = privacy_models(curves)
    last = curves[curves["model"].isin(names)].groupby("model", sort=False).tail(1)
    eps = privacy.set_index("Model")
    rows = []
    for _, r in last.iterrows():
        p = eps.loc[r["model"]] if r["model"] in eps.index else None
        rows.append(
            {
                "model": r["model"],
                "DP": "none" if p is None else p["DP"],
                "noise multiplier": None if p is None else p["Noise multiplier"],
                "ε (accountant)": None if p is None else p["epsilon (accountant)"],
                "ε lower bound (audit)": None if p is None else p["epsilon lower bound (audit)"],
                "validation perplexity": r["validation perplexity"],
                "canary exposure - base (bits)": r["exposure - base"],
                "extracted, train (%)": r["extracted, train (%)"],
            }
        )
    return pd.DataFrame(rows)


OFF_SCALE = 10  # a curve that passes this multiple of the base model's perplexity is named


def privacy_figure(curves: pd.DataFrame, privacy: pd.DataFrame) -> plt.Figure:
    """Left: the compared models' curves in the effectiveness-memorization plane, the DP
    twins dashed and labelled by ε, the base model the common start. Right: the DP twins
    alone, closer (they stay near the base model). A model whose perplexity passes
    ``OFF_SCALE`` times the base model's is named below the plane instead of drawn."""
    y, label = memorization_axis(curves)
    labels = {r["Model"]: dp_label(r) for _, r in privacy.iterrows()}
    twins = (curves["rq"] == collaboration.DP).any()
    if twins:
        fig, (ax, near) = plt.subplots(1, 2, figsize=(12, 4.8), width_ratios=[3, 2])
    else:
        fig, ax = plt.subplots(figsize=(8, 4.8))
    base = curves[curves["point"] == 0]["validation perplexity"].iloc[0]
    off = []  # a model the noise destroyed would squash every other curve: named, not drawn
    for name in privacy_models(curves):
        rows = curves[curves["model"] == name]
        last = rows.iloc[-1]["validation perplexity"]
        if rows["validation perplexity"].max() > OFF_SCALE * base:
            off.append(f"{labels.get(name, name)}: perplexity {last:.3g}")
            continue
        dp = rows["rq"].iloc[0] == collaboration.DP
        colour = SETTING_COLOURS.get(rows["setting"].iloc[0], "black")
        style = {"alpha": 0.8, "linestyle": "--" if dp else "-"}
        _curve(ax, rows, y, None if dp else name, colour, style)
        if dp:
            _curve(near, rows, y, labels.get(name, name), colour, style)
    _plane(ax, curves, y, label, "Dashed: under differential privacy (★ the base model)")
    if twins:
        _plane(near, curves, y, label, "The DP twins, closer, labelled by ε")
    if off:
        note = "Off the scale (perplexity above 10x the base model's): " + "; ".join(off)
        fig.text(0.01, 0.01, note, fontsize=7, wrap=True)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig


def privacy_note(privacy: pd.DataFrame, cfg: Config) -> str:
    """What the accountant assumed and what the audit did, in words, from the table."""
    dp = privacy[privacy["DP"] != "none"]
    audited = privacy[privacy["Guesses"] > 0]
    p = cfg.privacy
    parts = [
        f"ε at δ = {p.delta:g}, from Rényi DP of the sampled Gaussian mechanism (Opacus's "
        "accountant, Balle et al.'s conversion), over every step the job took."
    ]
    if len(dp):
        worst = dp.loc[dp["epsilon (accountant)"].idxmax()]
        parts.append(
            f"{len(dp)} DP twin{'s' if len(dp) > 1 else ''}: ε from "
            f"{dp['epsilon (accountant)'].min():.2g} to "
            f"{worst['epsilon (accountant)']:.2g} ({worst['Model']})."
        )
    if len(audited):
        r = audited.loc[audited["Audit canaries"].idxmax()]  # a model of every organization
        high = audited["epsilon lower bound (audit)"].max()
        parts.append(
            f"The audit planted each of {int(r['Audit canaries'])} canaries with probability "
            f"1/2 ({int(r['Planted'])} planted) and guessed on {int(r['Guesses'])} of them for a "
            "model of every organization (a single-organization model is audited on its own "
            f"organization's canaries only); its largest lower bound on any model is {high:.2g}."
        )
    else:
        parts.append("No audit canaries in this profile (`privacy.audit_canaries`: 0).")
    return " ".join(parts)


def ensemble_rows(cfg: Config) -> list[str]:
    """The base model, the synchronous models on all organizations and the ensemble: the
    rows that set the ensemble beside the paper's settings."""
    keep = ("centralized", "federated", "ensemble")
    specs = collaboration.roster(cfg)
    return [collaboration.BASE, *(s.name for s in specs if s.main and s.setting in keep)]


def rows_of(table: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """``table``'s rows of ``models`` only, in the table's order."""
    return table[table["model"].isin(models)]


def workflow_figure(cfg: Config) -> plt.Figure:
    """The study's workflow (the paper's Figure 1, with what this book adds shaded), drawn from
    the steps' own plans: a step stands right of the steps it reads, and an arrow that another
    path already implies is left out."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from collab_lib import pipeline

    deps = pipeline.dependencies(cfg)
    level: dict[str, int] = {}
    for name, before in deps.items():  # the steps come in order: a step after what it reads
        level[name] = 1 + max((level[b] for b in before), default=-1)
    columns: dict[int, list[str]] = {}
    for name, lv in level.items():
        columns.setdefault(lv, []).append(name)
    tall = max(len(c) for c in columns.values())
    where = {
        name: (lv * 3.3, (len(names) - 1) / 2 - i)
        for lv, names in columns.items()
        for i, name in enumerate(names)
    }
    fig, ax = plt.subplots(figsize=(2.3 * len(columns), 0.95 * tall + 0.6))
    for name, (x, y) in where.items():
        step = pipeline.STEPS[name]
        ax.add_patch(
            FancyBboxPatch(
                (x - 1.2, y - 0.38),
                2.4,
                0.76,
                boxstyle="round,pad=0.02",
                facecolor="#dbe7f3" if not step.beyond else "#f3e6cf",
                edgecolor="#4a4a4a",
            )
        )
        ax.text(x, y + 0.17, name, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.12, step.label, ha="center", va="center", fontsize=7, linespacing=1.1)
    for name, before in _reduced(deps).items():
        for b in before:
            (x0, y0), (x1, y1) = where[b], where[name]
            ax.add_patch(
                FancyArrowPatch(
                    (x0 + 1.22, y0),
                    (x1 - 1.22, y1),
                    arrowstyle="-|>",
                    mutation_scale=9,
                    color="#6b6b6b",
                    linewidth=0.8,
                    shrinkA=0,
                    shrinkB=0,
                )
            )
    ys = [y for _, y in where.values()]
    ax.set_xlim(-1.4, max(x for x, _ in where.values()) + 1.4)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    ax.set_title(
        "The study's steps (python -m collab_lib run STEP); shaded: beyond the paper",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _reduced(deps: dict[str, list[str]]) -> dict[str, list[str]]:
    """``deps`` without an edge another path implies (its transitive reduction)."""

    def reach(name: str) -> set[str]:
        out = set()
        for b in deps[name]:
            out |= {b} | reach(b)
        return out

    return {
        name: [b for b in before if not any(b in reach(o) for o in before if o != b)]
        for name, before in deps.items()
    }


def show_workflow(cfg: Config) -> None:
    """The workflow figure, with the line that says where it comes from."""
    display(workflow_figure(cfg))
    plt.close("all")
    display(Markdown("*Drawn from `collab_lib.pipeline.dependencies`: the steps' own plans.*"))


def show_verdicts(art: artifacts.Artifact, cfg: Config) -> None:
    """The seven findings at a glance: each claim and its verdict on this run."""
    from collab_lib import findings

    table = findings.table(art)
    show_table(table[["finding", "claim", "verdict"]], art, cfg, "findings")
