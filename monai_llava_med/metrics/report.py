# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VQA evaluation reports: the full results as JSON and a Markdown table of the summaries."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["format_markdown", "write_report"]

# (column title, summary key, kind): "pct" rates are shown as percentages, "int" as counts.
_COLUMNS = (
    ("questions", "count", "int"),
    ("closed", "closed_count", "int"),
    ("closed acc", "closed_acc", "pct"),
    ("no yes/no", "closed_no_answer", "int"),
    ("open", "open_count", "int"),
    ("open recall", "open_recall", "pct"),
    ("open F1", "open_f1", "pct"),
    ("open EM", "open_exact_match", "pct"),
    ("EM (all)", "exact_match", "pct"),
    ("failed", "failed", "int"),
    ("missing", "missing", "int"),
)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if kind == "pct" else str(int(value))


def format_markdown(results: Mapping[str, Any], title: str = "VQA evaluation") -> str:
    """A Markdown table with one row per data set and one for all questions.

    Args:
        results: the output of :func:`~monai_llava_med.metrics.evaluate_vqa`.
        title: the heading.
    """
    rows = [*results.get("per_dataset", {}).items(), ("**overall**", results["overall"])]
    lines = [
        f"# {title}",
        "",
        "| data set | " + " | ".join(c[0] for c in _COLUMNS) + " |",
        "|---|" + "---:|" * len(_COLUMNS),
    ]
    for name, summary in rows:
        cells = [str(name).replace("|", "\\|")] + [_cell(summary.get(k), kind) for _, k, kind in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rates in %. closed acc = correct / all closed questions (misses, failures and answers without",
        "yes/no count as wrong); yes/no are read as whole normalised tokens, the first one wins. Open recall",
        "/ F1 = ground-truth token recall / token F1 after normalisation, averaged over open questions;",
        "EM = normalised exact match. \u2013 = no question of that type.",
        "",
    ]
    if results.get("trust"):
        lines += _trust_lines(results["trust"])
    return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}"


def _trust_lines(trust: Mapping[str, Any]) -> list[str]:
    """The trust section as two Markdown tables (answers by type; probe sets)."""
    coverages = [str(c) for c in trust.get("coverages", ())]
    lines = ["## Trust (docs/trust.md)", "",
             "| answers | n | ECE [95 % CI] | Brier | AUROC | " + " | ".join(f"acc @ {c}" for c in coverages)
             + " | abstained | answered acc |", "|---|" + "---:|" * (6 + len(coverages))]
    for name, s in trust.get("answers", {}).items():
        ci = s.get("ece_95ci")
        ece = _num(s["ece"]) + ("" if not ci else f" [{_num(ci[0])}, {_num(ci[1])}]")
        cells = [name, str(s["count"]), ece, _num(s["brier"]), _num(s["auroc"]),
                 *(_num(s["accuracy_at_coverage"].get(c)) for c in coverages), _num(s["abstention_rate"]),
                 _num(s["answered_accuracy"])]
        lines.append("| " + " | ".join(cells) + " |")
    if trust.get("probe_sets"):
        lines += ["", "| probe set | n | abstained | gate refused | false yes [95 % CI] |", "|---|---:|---:|---:|---:|"]
        for name, s in trust["probe_sets"].items():
            fy = s["false_yes"]
            ci = fy.get("rate_95ci")
            rate = _num(fy["rate"]) + ("" if not ci else f" [{_num(ci[0])}, {_num(ci[1])}]")
            lines.append(f"| {name} | {s['count']} | {_num(s['abstention_rate'])} | {_num(s['gate_refusal_rate'])} | "
                         f"{rate} ({fy['yes']}/{fy['questions']}) |")
    lines += ["", f"ECE over {trust.get('bins')} equal-width bins, interval from a seeded bootstrap; acc @ c = accuracy "
              "of the most confident share c of the answers; false yes = \"yes\" to yes/no questions whose truth is "
              "\"no\" (the hallucination rate on an absent-finding probe set).", ""]
    return lines


def write_report(
    results: Mapping[str, Any], out_dir: str | os.PathLike, name: str = "vqa_metrics", title: str = "VQA evaluation"
) -> dict[str, Path]:
    """Write ``{name}.json`` (all results, per question included) and ``{name}.md`` (the table).

    Args:
        results: the output of :func:`~monai_llava_med.metrics.evaluate_vqa`.
        out_dir: the folder (created if missing).
        name: the file stem.
        title: the Markdown heading.

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(format_markdown(results, title), encoding="utf-8")
    return paths
