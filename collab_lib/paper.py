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

# Table 8: perplexity and pass@1/10/100 (%); "GPT-2" is the paper's base model
TABLE8 = {
    "GPT-2": (1084.78, 0.0, 0.0, 0.0),
    "Facebook_Only": (181.54, 0.0, 0.0, 0.0),
    "Microsoft_Only": (39.52, 0.009, 0.090, 0.763),
    "Google_Only": (5.36, 0.213, 1.190, 3.281),
    "Centralized_FMG": (3.32, 0.058, 0.530, 2.338),
    "Federated_Avg_FMG": (3.71, 0.598, 2.212, 3.943),
    "Federated_Yogi_FMG": (4.02, 0.506, 1.781, 3.770),
    "Incremental_F2M2G": (5.30, 0.546, 1.588, 3.800),
    "Incremental_F2G2M": (26.34, 0.003, 0.030, 0.305),
    "Incremental_M2F2G": (5.36, 0.521, 1.630, 3.165),
    "Incremental_M2G2F": (37.45, 0.012, 0.121, 1.068),
    "Incremental_G2F2M": (25.42, 0.0, 0.0, 0.0),
    "Incremental_G2M2F": (53.38, 0.006, 0.060, 0.458),
}
