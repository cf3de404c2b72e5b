# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Regenerate the bundle's sample/ (phantom DICOMs, datalist.json, train.json); run from bundles/llava_med.

The two slices get the 2-D questions; the CT series (32 slices, lesions only away from the middle slices) gets
questions that only the whole volume answers (``make_volume_questions``: anywhere in the scan, how many, upper or
lower half, which side, which lesion is larger).

Usage: ``python scripts/make_sample.py`` (deterministic: the same files every time).
"""

from __future__ import annotations

import json
from pathlib import Path

from monai_llava_med.data.phantom.generator import case_rng, generate_phantom
from monai_llava_med.data.phantom.questions import make_questions
from monai_llava_med.data.phantom.volume_questions import make_volume_questions
from monai_llava_med.data.phantom.writers import write_dicom

CASES = [
    ("ct_slice.dcm", {"ndim": 2, "modality": "CT", "num_lesions": 1}),
    ("mr_slice.dcm", {"ndim": 2, "modality": "MR", "num_lesions": 0}),
    ("ct_series", {"ndim": 3, "modality": "CT", "num_lesions": 2, "depth": 48, "lesion_z": "peripheral"}),
]
FAMILIES = ("presence", "side", "modality_closed", "count", "volume_presence", "volume_count", "volume_half",
            "volume_side", "volume_largest")


def main(out: Path = Path("sample")) -> None:
    items, records = [], []
    for index, (name, kwargs) in enumerate(CASES):
        case = generate_phantom(case_rng(2026, "test", index), size=64, case_id=f"sample-{index}", **kwargs)
        write_dicom(case, out / name, seed=index)
        conversation = []
        for qa in make_questions(case) if case.ndim == 2 else make_volume_questions(case):
            if qa.family not in FAMILIES:
                continue
            items.append({"id": f"{Path(name).stem}-{len(items)}", "image": name, "question": qa.question,
                          "answer": qa.answer, "answer_type": qa.answer_type})
            conversation.append({"from": "human", "value": ("" if conversation else "<image>\n") + qa.question})
            conversation.append({"from": "gpt", "value": qa.answer})
        records.append({"id": Path(name).stem, "image": name, "conversations": conversation})
    (out / "datalist.json").write_text(json.dumps(items, indent=2) + "\n")
    (out / "train.json").write_text(json.dumps(records, indent=2))
    print(f"{len(items)} questions about {len(CASES)} images written to {out}")


if __name__ == "__main__":
    main()
