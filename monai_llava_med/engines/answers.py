# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Question datalists in, answer files out: what the bundle's inference reads and writes."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.utils import optional_import

from ..data.llava_json import read_json_records
from ..data.records import question_id_of
from ..errors import LlavaMedError, RecordError
from .inference import ERROR_KEY
from .resume import atomic_write_text

Events, _ = optional_import("ignite.engine", name="Events")
Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["item_id", "load_datalist", "shard_datalist", "VqaAnswerWriter", "AllItemsFailedError"]

logger = logging.getLogger(__name__)
_CSV_FIELDS = (
    "id", "dataset", "image", "question", "answer_type", "ground_truth", "answer",
    "model", "modality", "source", "views", "latency_s", "confidence", "image_reliance", "abstained", "reason",
    "gate_distance", "error",
)
#: columns added after the others when some answer has them (paired probes, evaluation probe sets).
_OPTIONAL_CSV_FIELDS = ("paired_question", "paired_answer", "probe_set")


class AllItemsFailedError(LlavaMedError, RuntimeError):
    """Every item of a run failed: nothing was answered (the process exits non-zero); the message names the
    answers file that holds each item's error."""


def load_datalist(
    datalist: str | PathLike | Sequence[dict[str, Any]] | None = None,
    base_dir: str | PathLike | None = None,
    image: str | None = None,
    question: str | None = None,
) -> list[dict[str, Any]]:
    """Read questions to answer.

    Args:
        datalist: a JSON file holding a list of ``{"image", "question", "id"?}`` (or ``{"data": [...]}``), or
            the list itself; ignored when ``question`` is given.
        base_dir: folder that relative image paths are resolved against (default: the datalist's folder).
        image: a single image path (with ``question``): a one-item datalist from the command line.
        question: a single question.

    Returns:
        Items with a unique ``id`` (see :func:`item_id`) and resolved image paths. An item that is not a dict
        is kept as an error entry (the run goes on and reports it); one without a question fails when prepared.

    Raises:
        RecordError: for an unreadable file, an empty datalist or two items with the same id.
    """
    if question is not None:
        items: list[Any] = [{"id": "0", "image": image, "question": question}]
        source = "command line"
    elif isinstance(datalist, (str, PathLike)):
        path = Path(datalist)
        items = read_json_records(path, list_keys=("data", "testing", "validation"))
        base_dir = path.parent if base_dir is None else base_dir
        source = str(path)
    else:
        items, source = list(datalist or []), "datalist"
    if not isinstance(items, list) or not items:
        raise RecordError("the datalist must be a non-empty list of {image, question} items", source)
    out = []
    first_seen: dict[str, int] = {}
    for position, item in enumerate(items):
        if not isinstance(item, dict):  # kept as an error entry: the other items still run
            kind = type(item).__name__
            out.append({"id": str(position), ERROR_KEY: f"RecordError: item {position} is a {kind}, not a dict"})
            continue
        entry = dict(item)
        entry["id"] = item_id(entry, position)
        if entry["id"] in first_seen:
            raise RecordError(
                f"items {first_seen[entry['id']]} and {position} share the id {entry['id']!r}; ids must be unique "
                "(answers and metrics are keyed by them)",
                source,
            )
        first_seen[entry["id"]] = position
        if entry.get("image"):
            img = Path(str(entry["image"]))
            entry["image"] = str(img if img.is_absolute() or base_dir is None else Path(base_dir) / img)
        out.append(entry)
    return out


def item_id(item: dict[str, Any], position: int) -> str:
    """The id of a datalist item: ``question_id``, ``qid`` or ``id`` (the order the metrics use), else its position."""
    qid = question_id_of(item)
    return str(position) if qid is None else str(qid)


def shard_datalist(items: Sequence[dict[str, Any]], rank: int | None = None, world_size: int | None = None) -> list:
    """The share of ``items`` for this process (round-robin), from ``RANK`` / ``WORLD_SIZE`` by default."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])


class VqaAnswerWriter:
    """Ignite handler: collects the answers of an evaluator and writes ``answers.json`` and ``answers.csv``.

    With several processes (``WORLD_SIZE`` > 1) each writes ``answers.rank{R}.json``/``.csv``. When every item
    failed the run ends with :class:`AllItemsFailedError`, so the command exits non-zero; otherwise failed
    items appear as entries with an ``error`` and the run succeeds. With a ``torch.distributed`` process group
    "every item" means every item of every rank; processes started without one judge their own shard.

    Args:
        output_dir: destination folder (created).
        output_key: where the inferer's list of answers sits in ``engine.state.output``.
        print_answers: also log each answer.
    """

    def __init__(self, output_dir: str | PathLike, output_key: str = "pred", print_answers: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.output_key = output_key
        self.print_answers = print_answers
        self.results: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (STARTED, ITERATION_COMPLETED, COMPLETED)."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget earlier answers."""
        self.results = []

    def collect(self, engine: Engine) -> None:
        """Take the answers of one iteration."""
        batch = engine.state.output[self.output_key]
        self.results.extend(batch)
        if self.print_answers:
            for entry in batch:
                text = entry.get("answer", f"ERROR {entry.get(ERROR_KEY)}")
                logger.info("[%s] %s -> %s", entry.get("id"), entry.get("question"), text)

    def write(self, engine: Engine | None = None) -> list[Path]:
        """Write the collected answers, each file atomically (temporary file, fsync, rename).

        Raises:
            AllItemsFailedError: no item was answered (the files are written first).
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        world = int(os.environ.get("WORLD_SIZE", 1))
        stem = "answers" if world == 1 else f"answers.rank{int(os.environ.get('RANK', 0))}"
        json_path, csv_path = self.output_dir / f"{stem}.json", self.output_dir / f"{stem}.csv"
        atomic_write_text(json_path, json.dumps(self.results, indent=2, default=str) + "\n")
        table = io.StringIO(newline="")
        extra = [f for f in _OPTIONAL_CSV_FIELDS if any(f in entry for entry in self.results)]
        writer = csv.DictWriter(table, fieldnames=[*_CSV_FIELDS, *extra], extrasaction="ignore")
        writer.writeheader()
        for entry in self.results:
            writer.writerow({**entry, "views": json.dumps(entry.get("views", []))})
        atomic_write_text(csv_path, table.getvalue())
        failed = sum(ERROR_KEY in entry for entry in self.results)
        logger.info("wrote %d answers (%d failed) to %s", len(self.results), failed, json_path)
        total, answered = _run_totals(len(self.results), len(self.results) - failed)
        if total and not answered:
            first = next((e[ERROR_KEY] for e in self.results if ERROR_KEY in e), None)
            detail = f" (the first: {first})" if first else ""
            raise AllItemsFailedError(f"all {total} item(s) failed{detail}; each item's error is in {json_path}")
        return [json_path, csv_path]


def _run_totals(items: int, answered: int) -> tuple[int, int]:
    """Items and answered items summed over all ranks when a process group is up (else this process's)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items, answered
    counts = torch.tensor([items, answered], dtype=torch.long)
    if dist.get_backend() == "nccl":
        counts = counts.cuda()
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])
