# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VQA evaluation: answer normalisation, per-question scores, summaries, reports and a MONAI metric.

See ``docs/evaluation.md`` for the protocol and how it differs from the LLaVA-Med reference scripts.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "calibration_metrics": [
        "DEFAULT_BINS", "accuracy_at_coverage", "auroc", "bootstrap_interval", "brier_score",
        "expected_calibration_error", "reliability_bins", "risk_coverage_curve",
    ],
    "intervals": ["Z_95", "binomial_acceptance_interval", "wilson_interval"],
    "normalization": [
        "ARTICLES", "CONTRACTIONS", "NUMBER_WORDS", "YES_NO", "answer_to_text", "answer_tokens", "closed_answer",
        "is_numeric_answer", "normalize_answer",
    ],
    "prediction_files": [
        "evaluate_prediction_files", "load_ground_truth", "load_predictions", "match_predictions", "read_json_list",
    ],
    "report": ["format_markdown", "write_report"],
    "scoring": ["ANSWER_TYPES", "QuestionScore", "infer_answer_type", "score_question", "token_scores"],
    "vqa_evaluation": ["SUMMARY_KEYS", "evaluate_vqa", "parse_record", "summarize", "summarize_scores"],
    "trust_plots": ["write_trust_plots"],
    "trust_report": ["COVERAGES", "calibration_summary", "probe_set_summary", "trust_section"],
    "vqa_metric": ["TRUST_KEYS", "VQAMetric", "vqa_output_transform"],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
