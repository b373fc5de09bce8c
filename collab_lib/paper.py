"""The paper's own numbers (Chen & Jiang, ASE 2024), shown beside ours; never used as results."""

# Table 3: files and MB per split
TABLE3 = {
    ("Google", "train"): (53_545, 501.77),
    ("Google", "validation"): (13_387, 125.97),
    ("Microsoft", "train"): (15_251, 327.47),
    ("Microsoft", "validation"): (3_813, 87.63),
    ("Facebook", "train"): (2_148, 19.34),
    ("Facebook", "validation"): (538, 4.99),
}

# Table 4: per MB: LOC, classes, functions, docstrings
TABLE4 = {
    "Google": (5_309.70, 184.87, 946.05, 547.44),
    "Microsoft": (4_823.18, 173.50, 460.67, 358.63),
    "Facebook": (7_588.45, 248.58, 1_435.30, 557.21),
}

# §3: raw codebases before preprocessing (files, MB) and Table 2 (repositories)
RAW = {"Google": (125_847, 1_018.93), "Microsoft": (33_560, 703.29), "Facebook": (5_207, 38.58)}
TABLE2 = {
    "Google": (32, "google, google-research, google-deepmind, etc."),
    "Microsoft": (10, "microsoft, Azure, MicrosoftEdge, etc."),
    "Facebook": (5, "facebook, facebookresearch, fbsamples, etc."),
}
