"""The clones step: Figure 2 within organizations, Table 7 across them, with vendored code."""

import yaml

from collab_lib.clone_stats import build_clone_stats, table
from collab_lib.config import load_config
from tests.conftest import make_org_dir, py_module


def test_table7_counts_the_vendored_copies_and_the_natural_rate(tmp_path):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "six_like.py").write_text("\n".join(py_module(i, "vend") for i in range(6)))
    orgs = {
        "Google": ("G", make_org_dir(tmp_path / "g", "tensor", 6)),
        "Microsoft": ("M", make_org_dir(tmp_path / "m", "azure", 6)),
        "Facebook": ("F", make_org_dir(tmp_path / "f", "torch", 3)),
    }
    data = {"seed": 0, "datasets": {"organizations": []}}
    for name, (short, path) in orgs.items():
        sources = [{"dir": str(path)}]
        if name != "Facebook":
            sources.append({"dir": str(vendor), "vendored": True, "patch_fraction": 0.05})
        data["datasets"]["organizations"].append({"name": name, "short": short, "sources": sources})
    profile = tmp_path / "p.yml"
    profile.write_text(yaml.safe_dump(data))
    art = build_clone_stats(load_config(profile))

    t7 = table(art, "table7").set_index(["scenario", "organizations"])
    with_vendor = t7.loc[("with vendored code", "Microsoft ∩ Google")]
    natural = t7.loc[("natural (first-party only)", "Microsoft ∩ Google")]
    assert with_vendor["lines"] > 60 and with_vendor["blocks"] >= 1
    assert natural["lines"] == 0  # the organizations' own modules share nothing
    assert t7.loc[("with vendored code", "all three"), "blocks"] == 0
    assert with_vendor["paper_blocks"] == 316

    fig2 = table(art, "figure2").set_index("organization")
    assert list(fig2.index) == ["Google", "Microsoft", "Facebook"]
    assert (fig2["train_mb"] > 0).all()
    assert (fig2["clone_loc_per_mb"] == (fig2["clone_loc"] / fig2["train_mb"]).round(2)).all()
