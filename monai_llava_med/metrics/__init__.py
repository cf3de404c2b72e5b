# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VQA evaluation: answer normalisation, per-question scores, summaries, reports and a MONAI metric.

See ``docs/evaluation.md`` for the protocol and how it differs from the LLaVA-Med reference scripts.
"""

from __future__ import annotations

from .normalization import (
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    YES_NO,
    answer_to_text,
    answer_tokens,
    closed_answer,
    normalize_answer,
)
from .prediction_files import (
    evaluate_prediction_files,
    load_ground_truth,
    load_predictions,
    match_predictions,
    read_json_list,
)
from .report import format_markdown, write_report
from .scoring import ANSWER_TYPES, QuestionScore, infer_answer_type, score_question, token_scores
from .vqa_evaluation import SUMMARY_KEYS, evaluate_vqa, parse_record, summarize, summarize_scores
from .vqa_metric import VQAMetric, vqa_output_transform

__all__ = [
    "ANSWER_TYPES",
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "QuestionScore",
    "SUMMARY_KEYS",
    "VQAMetric",
    "YES_NO",
    "answer_to_text",
    "answer_tokens",
    "closed_answer",
    "evaluate_prediction_files",
    "evaluate_vqa",
    "format_markdown",
    "infer_answer_type",
    "load_ground_truth",
    "load_predictions",
    "match_predictions",
    "normalize_answer",
    "parse_record",
    "read_json_list",
    "score_question",
    "summarize",
    "summarize_scores",
    "token_scores",
    "vqa_output_transform",
    "write_report",
]
