# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Training hyper-parameters as one dataclass, with the LLaVA-Med recipe's stages as presets.

Defaults follow the reference recipe (``shared/REFERENCE.md``): stage 1 trains the projector only at lr 2e-3
for one epoch (ZeRO-2); stage 2 trains projector + language model at lr 2e-5 for three epochs (ZeRO-3);
the downstream fine-tune uses the stage-2 settings. All stages: weight decay 0, 3 % linear warm-up, cosine
decay, global batch 128, context 2048, gradient checkpointing. Every field can be overridden.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

from ..networks import STAGES

__all__ = ["LoraSettings", "TrainingConfig", "STAGE_DEFAULTS", "stage_preset"]


@dataclass
class LoraSettings:
    """LoRA adapters on the language model (peft); merged into the weights on export.

    Args:
        r: adapter rank.
        alpha: scaling numerator (``alpha / r`` scales the update).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters.
    """

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0 or not self.target_modules:
            raise ValueError(f"invalid LoRA settings: {self}")


@dataclass
class TrainingConfig:
    """Everything a training run needs besides the model config and the data.

    Args:
        stage: ``stage1``, ``stage2`` or ``finetune``: which parts train (see ``networks.STAGES``).
        learning_rate: peak learning rate.
        num_epochs: passes over the data.
        max_steps: stop after this many optimizer steps (None: run ``num_epochs``).
        global_batch_size: samples per optimizer step over all ranks; gradient accumulation is derived
            from it (``global / (micro * world)``) unless ``gradient_accumulation_steps`` is set.
        micro_batch_size: samples per forward pass on one rank.
        gradient_accumulation_steps: explicit accumulation (overrides the derivation).
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of optimizer steps with linear warm-up.
        lr_scheduler: ``cosine``, ``linear`` or ``constant`` (transformers' schedules, with warm-up).
        adam_betas: AdamW betas.
        adam_eps: AdamW epsilon.
        max_grad_norm: gradient clipping (0 disables).
        max_length: context length (truncation of samples).
        deepspeed: ``zero2``, ``zero3``, ``zero2_offload``, ``zero3_offload`` (files in ``training/deepspeed``),
            a path to a DeepSpeed JSON, or a dict.
        gradient_checkpointing: recompute activations in backward.
        group_by_length: length-grouped batches (less padding).
        lora: LoRA adapters on the language model instead of full fine-tuning (None: full).
        seed: seed of weights, shuffling and every RNG.
        output_dir: where checkpoints, logs and the exported model go.
        save_every_n_steps: DeepSpeed checkpoint every N optimizer steps (0: only at the end).
        keep_last_checkpoints: keep this many complete step checkpoints (0 keeps all); older ones are deleted only
            once a newer one is complete.
        resume: continue from the newest complete checkpoint in ``output_dir/checkpoints`` when there is one.
        restart: start from scratch although ``output_dir/checkpoints`` holds checkpoints (they are moved aside to
            ``checkpoints.replaced-<time>``); without it such a folder is refused when none of its checkpoints
            can be resumed, or when ``resume`` is off.
        export: write the consolidated model (our layout) to ``output_dir/model`` at the end.
        log_every_n_steps: loss log / progress interval in iterations.
        num_workers: DataLoader worker processes.
        template: conversation template.
        train_vision: train the vision tower as well in this stage (every stage of the recipe keeps it frozen; a
            randomly initialised 3-D tower needs training).
        vision_weights: a local ``.pt`` / ``.safetensors`` file of pretrained 3-D encoder weights (a MONAI ``ViT``,
            or a ``UNETR`` whose ``vit.*`` is taken) loaded into the 3-D tower before training
            (:func:`~monai_llava_med.networks.load_vision_weights`; keys mapped as documented there).
    """

    stage: str = "stage2"
    learning_rate: float = 2e-5
    num_epochs: int = 3
    max_steps: int | None = None
    global_batch_size: int = 128
    micro_batch_size: int = 16
    gradient_accumulation_steps: int | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    max_length: int = 2048
    deepspeed: str | dict[str, Any] = "zero3"
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    lora: LoraSettings | None = None
    seed: int = 42
    output_dir: str = "./runs/llava_med"
    save_every_n_steps: int = 500
    keep_last_checkpoints: int = 2
    resume: bool = True
    restart: bool = False
    export: bool = True
    log_every_n_steps: int = 10
    num_workers: int = 0
    template: str = "mistral_instruct"
    train_vision: bool = False
    vision_weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        self.output_dir = str(self.output_dir)
        if self.vision_weights is not None:
            self.vision_weights = str(self.vision_weights)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValueError` for values that cannot train."""
        if self.stage not in STAGES or self.stage == "inference":
            raise ValueError(f"stage must be 'stage1', 'stage2' or 'finetune', got {self.stage!r}")
        if self.learning_rate <= 0 or self.num_epochs < 1 or self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("learning_rate, num_epochs, micro_batch_size and global_batch_size must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_scheduler must be 'cosine', 'linear' or 'constant', got {self.lr_scheduler!r}")
        if self.save_every_n_steps < 0 or self.keep_last_checkpoints < 0 or self.log_every_n_steps < 1:
            raise ValueError("save_every_n_steps and keep_last_checkpoints must be >= 0, log_every_n_steps >= 1")
        if not isinstance(self.train_vision, bool):
            raise ValueError(f"train_vision must be true or false, got {self.train_vision!r}")
        if self.lora is not None and self.stage == "stage1":
            raise ValueError("LoRA adapts the language model, which stage 1 keeps frozen")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank for ``world_size`` ranks.

        Raises:
            ValueError: when ``global_batch_size`` is not a multiple of ``micro_batch_size * world_size``.
        """
        if self.gradient_accumulation_steps is not None:
            return int(self.gradient_accumulation_steps)
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x {world_size} rank(s); set gradient_accumulation_steps explicitly"
            )
        return max(1, self.global_batch_size // per_step)

    # ------------------------------------------------------------------------------------------------ serialise
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        if self.lora is not None:
            out["lora"]["target_modules"] = list(self.lora.target_modules)
        return copy.deepcopy(out)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused by name."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"Unknown TrainingConfig fields: {unknown}.")
        return cls(**copy.deepcopy(values))

    def save(self, path: str | PathLike) -> Path:
        """Write the config as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


#: The reference recipe per stage (fields of :class:`TrainingConfig`).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "stage1": {"stage": "stage1", "learning_rate": 2e-3, "num_epochs": 1, "deepspeed": "zero2"},
    "stage2": {"stage": "stage2", "learning_rate": 2e-5, "num_epochs": 3, "deepspeed": "zero3"},
    "finetune": {"stage": "finetune", "learning_rate": 2e-5, "num_epochs": 3, "deepspeed": "zero3"},
}


def stage_preset(stage: str, **overrides: Any) -> TrainingConfig:
    """The reference hyper-parameters of a stage, with ``overrides`` applied.

    Args:
        stage: ``stage1``, ``stage2`` or ``finetune``.
        overrides: any :class:`TrainingConfig` field.
    """
    if stage not in STAGE_DEFAULTS:
        raise ValueError(f"Unknown stage {stage!r}; choose from {sorted(STAGE_DEFAULTS)}.")
    values = dict(STAGE_DEFAULTS[stage])
    values.update(overrides)
    return TrainingConfig(**values)
