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

# Figure 2: the paper's text gives only the most duplicated organization's values (clone
# blocks, clone LOC per MB); the others are bars without numbers
FIGURE2_TOP = ("Microsoft", 755.40, 17_500.42)

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

# Table 6: functions, prompts (with a docstring, <= 512 tokens) and the 10 % sampled
TABLE6 = {
    "Google": (475_256, 187_900, 18_790),
    "Microsoft": (150_248, 58_068, 5_807),
    "Facebook": (27_340, 8_159, 816),
}

# Table 9: per (model, organization): lines generated, memorized blocks, memorized lines,
# memorization ratio (%)
_T9 = {
    "Centralized_FMG": ((2_961_075, 554, 7_372, 0.249), (994_977, 4_732, 63_215, 6.353),
                        (170_951, 4, 40, 0.023)),
    "Federated_Avg_FMG": ((2_954_757, 723, 7_799, 0.263), (1_305_876, 901, 6_753, 0.517),
                          (168_833, 11, 112, 0.066)),
    "Federated_Yogi_FMG": ((3_014_251, 899, 12_253, 0.407), (1_492_648, 8, 56, 0.004),
                           (162_671, 3, 31, 0.019)),
    "Incremental_F2M2G": ((3_254_489, 816, 9_477, 0.291), (1_507_980, 26, 173, 0.011),
                          (173_845, 4, 37, 0.021)),
    "Incremental_F2G2M": ((2_900_802, 98, 877, 0.030), (955_695, 4_893, 68_512, 7.169),
                          (136_075, 3, 31, 0.023)),
    "Incremental_M2F2G": ((3_017_063, 870, 11_235, 0.372), (1_271_080, 4, 25, 0.002),
                          (162_598, 4, 40, 0.025)),
    "Incremental_M2G2F": ((2_463_402, 63, 576, 0.023), (1_120_943, 1, 8, 0.001),
                          (120_339, 23, 188, 0.156)),
    "Incremental_G2F2M": ((2_911_387, 53, 514, 0.018), (967_170, 5_762, 78_632, 8.130),
                          (136_737, 2, 23, 0.017)),
    "Incremental_G2M2F": ((1_932_255, 62, 528, 0.027), (714_779, 1, 6, 0.001),
                          (96_647, 14, 146, 0.151)),
}  # fmt: skip
TABLE9 = {
    (model, org): row
    for model, rows in _T9.items()
    for org, row in zip(("Google", "Microsoft", "Facebook"), rows, strict=True)
}

# Table 10: memorization ratio (%) summed over the organizations (its rank order)
TABLE10 = {
    "Incremental_G2F2M": 1.971, "Incremental_F2G2M": 1.736, "Centralized_FMG": 1.711,
    "Federated_Avg_FMG": 0.330, "Federated_Yogi_FMG": 0.264, "Incremental_M2F2G": 0.253,
    "Incremental_F2M2G": 0.196, "Incremental_G2M2F": 0.025, "Incremental_M2G2F": 0.021,
}  # fmt: skip

# Table 11: cross-organization clones of Microsoft and Google: lines generated, memorized
# blocks, memorized lines, ratio (%)
TABLE11 = {
    "Centralized_MG": (46_173, 55, 261, 0.565),
    "Federated_Avg_MG": (43_976, 51, 243, 0.552),
    "Federated_Yogi_MG": (43_950, 44, 211, 0.480),
    "Incremental_G2M": (33_265, 16, 64, 0.192),
    "Incremental_M2G": (38_618, 24, 95, 0.246),
}

# Table 5: base models' mean Log(PPL)/zlib ratio on 10 % of the data (lower: more likely
# seen in pre-training), with what each was trained on
TABLE5 = {
    "GPT-2": ("WebText (8M web documents)", 0.0020256),
    "GPT-Neo-125M": ("The Pile (includes code repositories)", 0.0014813),
    "CodeParrot-Small": ("Python code from GitHub", 0.0008022),
    "PyCodeGPT": ("Python scripts from GitHub", 0.0008196),
    "LLaMA-2-7B": ("Web, books, code data", 0.0006497),
    "Mistral-7B-v0.1": ("Mixed web and code data", 0.0007225),
    "CodeLlama-7B-Python": ("High-quality Python code", 0.0003863),
    "LLaMA-3-8B": ("Enhanced web and code data", 0.0006599),
}
