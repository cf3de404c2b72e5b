# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI inferer that answers a collated batch: one ``generate`` call, then the trust fields of each answer.

Used by the bundle's ``inference.json`` (through ``SupervisedEvaluator``), by
:class:`~monai_llava_med.engines.LlavaMedPredictor` and by the server's batcher.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from monai.inferers import Inferer

from ..metrics.normalization import is_numeric_answer
from ..networks import LlavaMedNet
from ..trust.assessment import AnswerScores, image_features, score_answers, trust_fields
from ..trust.calibration import Calibration
from ..trust.confidence import yes_no_token_ids
from ..trust.gate import ProjectorInputs

__all__ = ["ERROR_KEY", "ENTRY_KEYS", "LlavaMedInferer"]

ERROR_KEY = "error"
#: Item fields copied into each answer entry when the item has them (``dataset`` and ``question_id`` key the
#: metrics; ``probe_set`` groups the evaluation's refusal and hallucination rates).
ENTRY_KEYS = ("id", "question_id", "dataset", "image", "question", "answer_type", "probe_set")


class LlavaMedInferer(Inferer):
    """A MONAI inferer that answers a collated batch with the network's ``generate``.

    Args:
        tokenizer: decodes the generated ids.
        max_new_tokens: longest answer in tokens.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus mass.
        model_name: reported with each answer; default the network's ``config.name``.
        trust: add the trust fields (``confidence``, ``image_reliance``, ``abstained``, ``reason``,
            ``gate_distance``) to each answer, from one extra batched forward pass (:mod:`monai_llava_med.trust`).
        calibration: the fitted :class:`~monai_llava_med.trust.Calibration` (scaling, thresholds, input gate), or
            ``None`` for raw confidences.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        model_name: str | None = None,
        trust: bool = True,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        self.model_name = model_name
        self.trust = trust
        self.calibration = calibration
        self.yes_no_ids = yes_no_token_ids(tokenizer) if trust else ((), ())

    def __call__(self, inputs: Mapping[str, Any], network: LlavaMedNet, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Answer every item of ``inputs`` (see :func:`collate_vqa`); error items pass through.

        Args:
            inputs: a collated batch.
            network: the LLaVA-Med network.
            args: unused (MONAI inferer signature).
            kwargs: generation overrides (``max_new_tokens``, ``do_sample``...).
        """
        return self.answer(inputs, network, **kwargs)[0]

    def answer(
        self, inputs: Mapping[str, Any], network: LlavaMedNet, **kwargs: Any
    ) -> tuple[list[dict[str, Any]], list[AnswerScores | None]]:
        """The answer entries (as ``__call__``) and, per entry, the raw :class:`~monai_llava_med.trust.AnswerScores`
        behind its trust fields (``None`` for an error entry, or for all with ``trust=False``).

        Generation is one ``generate`` call for the batch; the trust fields cost one more batched forward pass.
        Paired probes (rows ``B + p`` of a batch with ``probe_of``, see :func:`collate_vqa`) are answered in the same
        call; each item with a probe gets ``paired_question`` and ``paired_answer``, and abstains when the two
        answers contradict each other (:func:`~monai_llava_med.trust.contradicts`).

        Raises:
            ValueError: a batch with paired probes and ``trust=False`` (probes abstain through the trust fields).
        """
        generation = {**self.generation, **kwargs}
        answers: list[str] = []
        scores: list[AnswerScores | None] = []
        probe_of = list(inputs.get("probe_of") or [])
        if probe_of and not self.trust:
            raise ValueError("paired probes abstain through the trust fields: they need trust=True")
        elapsed = 0.0
        if inputs.get("input_ids") is not None:
            start = time.perf_counter()
            ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values")
            eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
            if self.trust:  # generate's own logits give the probabilities with the image
                with ProjectorInputs(network.projector) as seen:
                    out = network.generate(ids, mask, pixels, eos_token_id=eos, pad_token_id=pad, output_logits=True,
                                           return_dict_in_generate=True, **generation)
                new_tokens = out.sequences
                per_row = (ids == network.config.image_token_id).sum(1) // network.config.num_image_tokens
                scores = score_answers(network, ids, mask, pixels, new_tokens, torch.stack(out.logits, 1),
                                       *self.yes_no_ids, eos, pad, features=image_features(seen, per_row))
            else:
                new_tokens = network.generate(ids, mask, pixels, eos_token_id=eos, pad_token_id=pad, **generation)
            answers = [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            for score, text in zip(scores, answers):  # an open answer that states a number has its own calibration
                if score.kind == "open" and is_numeric_answer(text):
                    score.kind = "number"
            elapsed = time.perf_counter() - start
        first_probe = len(answers) - len(probe_of)
        pairs = {r: first_probe + p for p, r in enumerate(probe_of)}
        paired_answers = {r: answers[row] for r, row in pairs.items()}
        fields = iter(trust_fields(scores, self.calibration, pairs)[:first_probe] if scores else [])
        answers, scores = answers[:first_probe], scores[:first_probe]
        name = self.model_name or network.config.name
        results, good, raw, kept = [], iter(answers), iter(scores), []
        row = 0
        for item in inputs["items"]:
            entry = {k: item.get(k) for k in ENTRY_KEYS if k in item}
            if "answer" in item:  # a datalist with ground truth (evaluation)
                entry["ground_truth"] = item["answer"]
            entry["model"] = name
            if ERROR_KEY in item:
                entry[ERROR_KEY] = item[ERROR_KEY]
                kept.append(None)
            else:
                entry.update(
                    answer=next(good),
                    views=item.get("views", []),
                    modality=item.get("modality"),
                    source=item.get("source"),
                    latency_s=round(float(item.get("preprocess_s", 0.0)) + elapsed, 4),
                    **(next(fields) if scores else {}),
                )
                if "paired_question" in item:  # prepared with paired probes
                    entry.update(paired_question=item["paired_question"], paired_answer=paired_answers.get(row))
                kept.append(next(raw) if scores else None)
                row += 1
            results.append(entry)
        return results, kept
