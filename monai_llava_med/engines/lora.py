# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LoRA adapters on the language model of a LLaVA-Med network (peft), and merging them back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import optional_import

if TYPE_CHECKING:
    from ..networks import LlavaMedNet
    from .train_config import LoraSettings

peft, has_peft = optional_import("peft")

__all__ = ["apply_lora", "merge_lora", "has_lora"]


def has_lora(model: LlavaMedNet) -> bool:
    """Whether the language model is wrapped with peft adapters."""
    return has_peft and isinstance(model.language_model, peft.PeftModel)


def apply_lora(model: LlavaMedNet, settings: LoraSettings) -> LlavaMedNet:
    """Wrap ``model.language_model`` with LoRA adapters; its base weights are frozen, the adapters train.

    The projector and vision tower keep their ``requires_grad`` (stage 2 / fine-tune train the projector).

    Args:
        model: the network, changed in place.
        settings: rank, alpha, dropout and target layers.

    Raises:
        ImportError: peft is not installed.
    """
    if not has_peft:
        raise ImportError("LoRA training needs peft: pip install 'monai-llava-med[train]'")
    if has_lora(model):
        return model
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.language_model = peft.get_peft_model(model.language_model, config)
    return model


def merge_lora(model: LlavaMedNet) -> LlavaMedNet:
    """Fold the adapters into the language model's weights and drop the peft wrapper (in place)."""
    if has_lora(model):
        model.language_model = model.language_model.merge_and_unload()
    return model
