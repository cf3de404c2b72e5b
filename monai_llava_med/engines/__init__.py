# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI engines for LLaVA-Med: DeepSpeed training workflows and question answering."""

from __future__ import annotations

from .train_config import STAGE_DEFAULTS, LoraSettings, TrainingConfig, stage_preset

__all__ = ["STAGE_DEFAULTS", "LoraSettings", "TrainingConfig", "stage_preset"]

# Training needs deepspeed and pytorch-ignite (the ``train`` extra); inference does not.
try:
    from .checkpointing import (
        ResumableBatchSampler,
        export_consolidated,
        export_from_checkpoint,
        latest_checkpoint,
        load_training_checkpoint,
        save_training_checkpoint,
    )
    from .deepspeed_setup import init_distributed_env, load_deepspeed_config, resolve_deepspeed_config
    from .lora import apply_lora, merge_lora
    from .trainer import (
        ConsolidatedExport,
        DeepSpeedCheckpointer,
        DeepSpeedTrainer,
        LlavaMedLossEvaluator,
        LossLogger,
        prepare_llava_batch,
    )
    from .training import build_trainer, load_run_config, make_train_loader, run_training, seed_everything
except ImportError as _err:  # pragma: no cover - depends on the installed extras
    _TRAINING_IMPORT_ERROR: ImportError | None = _err
else:
    _TRAINING_IMPORT_ERROR = None
    __all__ += [
        "ResumableBatchSampler",
        "export_consolidated",
        "export_from_checkpoint",
        "latest_checkpoint",
        "load_training_checkpoint",
        "save_training_checkpoint",
        "init_distributed_env",
        "load_deepspeed_config",
        "resolve_deepspeed_config",
        "apply_lora",
        "merge_lora",
        "ConsolidatedExport",
        "DeepSpeedCheckpointer",
        "DeepSpeedTrainer",
        "LlavaMedLossEvaluator",
        "LossLogger",
        "prepare_llava_batch",
        "build_trainer",
        "load_run_config",
        "make_train_loader",
        "run_training",
        "seed_everything",
    ]

# inference exports (lead)
from .answers import AllItemsFailedError, VqaAnswerWriter, load_datalist, shard_datalist
from .inference import (
    ERROR_KEY,
    LlavaMedInferer,
    LlavaMedPredictor,
    PrepareVqaItem,
    build_preprocess,
    collate_vqa,
    prepare_vqa_batch,
)

__all__ += [
    "AllItemsFailedError",
    "VqaAnswerWriter",
    "load_datalist",
    "shard_datalist",
    "ERROR_KEY",
    "LlavaMedInferer",
    "LlavaMedPredictor",
    "PrepareVqaItem",
    "build_preprocess",
    "collate_vqa",
    "prepare_vqa_batch",
]
