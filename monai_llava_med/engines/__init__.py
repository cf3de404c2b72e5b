# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI engines for LLaVA-Med: DeepSpeed training workflows and question answering (batched or streamed).

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed. The training names need the ``train`` extra (DeepSpeed,
pytorch-ignite); without it, using one of them raises the ``ImportError`` naming the missing package, while
the question-answering names keep working.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "train_config": ["STAGE_DEFAULTS", "LoraSettings", "TrainingConfig", "stage_preset"],
    "checkpointing": [
        "ResumableBatchSampler", "export_consolidated", "export_from_checkpoint", "latest_checkpoint",
        "load_training_checkpoint", "save_training_checkpoint",
    ],
    "deepspeed_setup": ["init_distributed_env", "load_deepspeed_config", "resolve_deepspeed_config"],
    "lora": ["apply_lora", "merge_lora"],
    "trainer": [
        "ConsolidatedExport", "DeepSpeedCheckpointer", "DeepSpeedTrainer", "LlavaMedLossEvaluator", "LossLogger",
        "prepare_llava_batch",
    ],
    "training": ["build_trainer", "load_run_config", "make_train_loader", "run_training", "seed_everything"],
    "bundle_run": ["bundle_path", "report_errors_without_traceback", "typed_cause"],
    "dicom_sr": ["CODES", "CODING_SCHEME", "RESEARCH_USE", "build_answer_sr", "prime_sr_builder", "weights_sha256"],
    "dicom_sr_files": ["read_answer_sr", "write_answer_sr", "write_bundle_answer_sr"],
    "answers": ["AllItemsFailedError", "VqaAnswerWriter", "load_datalist", "shard_datalist"],
    "inferer": ["ERROR_KEY", "LlavaMedInferer"],
    "inference": ["PrepareVqaItem", "build_preprocess", "collate_vqa", "prepare_vqa_batch"],
    "predictor": ["LlavaMedPredictor"],
    "calibrate": ["fit_calibration", "run_calibration"],
    "streaming": ["Completion", "GenerationRequest", "RowTracker", "stream_generate"],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
