"""The clones step: Figure 2 within organizations, Table 7 across them, with vendored code."""

import pandas as pd
import pytest
import yaml

from collab_lib import pipeline
from collab_lib.config import load_config
from collab_lib.datasets import MB
from tests.conftest import make_org_dir, run_through


def test_table7_counts_the_vendored_copies_and_the_natural_rate(tmp_path):
    vendor = make_org_dir(tmp_path / "vendor", "vend", 12)
    orgs = {
        "Google": ("G", make_org_dir(tmp_path / "g", "tensor", 6)),
        "Microsoft": ("M", make_org_dir(tmp_path / "m", "azure", 6)),
        "Facebook": ("F", make_org_dir(tmp_path / "f", "torch", 3)),
    }
    # a generous budget, so that organizations this small vendor a few whole files; the RQ3
    # pair named in either order finds the paper's row
    data = {
        "seed": 0,
        "datasets": {"organizations": [], "vendored_max_fraction": 0.5},
        "collaboration": {"rq3_pair": ["Microsoft", "Google"]},
    }
    for name, (short, path) in orgs.items():
        sources = [{"dir": str(path)}]
        if name != "Facebook":
            sources.append({"dir": str(vendor), "vendored": True, "patch_fraction": 0.05})
        data["datasets"]["organizations"].append({"name": name, "short": short, "sources": sources})
    profile = tmp_path / "p.yml"
    profile.write_text(yaml.safe_dump(data))
    cfg = load_config(profile)
    art = run_through("clones", cfg)

    t7 = art.table("table7").set_index(["scenario", "organizations"])
    with_vendor = t7.loc[("with vendored code", "Google ∩ Microsoft")]
    natural = t7.loc[("natural (first-party only)", "Google ∩ Microsoft")]
    assert with_vendor["lines"] > 60 and with_vendor["blocks"] >= 1
    assert natural["lines"] == 0  # the organizations' own modules share nothing
    assert t7.loc[("with vendored code", "all three"), "blocks"] == 0
    assert with_vendor["paper_blocks"] == 316
    # the shared share: common lines over the union of both training splits' counted lines
    assert with_vendor["train_lines"] > natural["train_lines"] > 0
    assert with_vendor["shared_pct"] == round(
        100 * with_vendor["lines"] / with_vendor["train_lines"], 3
    )
    assert 0 < with_vendor["shared_pct"] < 50  # vendored code is at most half of each side
    assert with_vendor["paper_shared_pct"] == pytest.approx(100 * 7_536 / 18_541_980, abs=1e-3)

    # Figure 2: each organization's own code; its vendored copies in a labelled row of their own
    fig2 = art.table("figure2").set_index("organization")
    vendored_rows = [f"{o}: vendored copies (vendor)" for o in ("Google", "Microsoft")]
    assert list(fig2.index) == ["Google", "Microsoft", "Facebook", *vendored_rows]
    assert list(fig2["vendored"]) == [False] * 3 + [True] * 2
    ds = pipeline.load("datasets", cfg)
    for org in ("Google", "Microsoft"):
        s = ds.summary(org)
        own_mb = (s["splits"]["train"]["bytes"] - s["vendored"]["bytes"]) / MB
        assert fig2.loc[org, "train_mb"] == round(own_mb, 3)
        assert fig2.loc[f"{org}: vendored copies (vendor)", "train_mb"] == round(
            s["vendored"]["bytes"] / MB, 3
        )
    own_lines = fig2.loc["Google", "counted_lines"] + fig2.loc["Microsoft", "counted_lines"]
    assert own_lines == natural["train_lines"]
    assert (fig2["train_mb"] > 0).all()
    assert (fig2["clone_loc_per_mb"] == (fig2["clone_loc"] / fig2["train_mb"]).round(2)).all()


def test_figure2_names_this_runs_most_duplicated_organization_beside_the_papers():
    from collab_lib.report import figure2_note

    fig2 = pd.DataFrame(
        {
            "organization": ["Ads", "Web", "Web: vendored copies (six)"],
            "vendored": [False, False, True],
            "clone_loc_per_mb": [861.0, 1443.2, 0.0],
        }
    )
    text = figure2_note(fig2)
    assert "Web 1,443 > Ads 861; the most duplicated is Web" in text
    assert "In the paper it is Microsoft" in text and "their bars are empty" in text
