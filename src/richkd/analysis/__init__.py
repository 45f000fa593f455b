"""Analyses of predictors that read files, never models (METHOD.md §9, docs/analysis_formats.md).

- ``predictions``  the predictions file (safetensors + JSON provenance) that `richkd predict` writes
- ``metrics``      top-k accuracy, NLL, ECE, confidence quadrants (also used during training and evaluation)
- ``calibration``  ECE, adaptive ECE, classwise ECE, reliability-diagram bins
- ``quadrants``    per-sample confident/unconfident × correct/wrong states and flows between two predictors
- ``consistency``  class-correlation matrices, their rank correlation with class-name similarity or a
                   reference, and mdistiller's teacher–student difference
- ``agreement``    top-1 agreement and KL between two predictors
- ``analyze``      all of the above assembled into analysis.json (and its Markdown summary)
- ``cost``         model size, FLOPs and speed (`richkd cost`)

Every metric is a pure function of tensors; only the CLI reads and writes files.
"""
