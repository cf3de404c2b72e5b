# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LLaVA-Med as a MONAI network: vision tower (CLIP, or MONAI's 3-D ViT) -> projector -> causal language model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import LlavaMedConfig, projector_depth
from .shared_prefix import cache_argument, shared_prefix_inputs, unique_images
from .token_pooling import pool_patch_tokens
from .vision_towers import build_vision_tower, tower_features, vision_width

__all__ = [
    "LlavaMedNet",
    "build_projector",
    "set_trainable",
    "configure_stage",
    "STAGES",
]

#: Which parts train in each stage of the LLaVA-Med recipe (vision, projector, language model).
STAGES: dict[str, dict[str, bool]] = {
    "stage1": {"vision": False, "projector": True, "language_model": False},
    "stage2": {"vision": False, "projector": True, "language_model": True},
    "finetune": {"vision": False, "projector": True, "language_model": True},
    "inference": {"vision": False, "projector": False, "language_model": False},
}


def build_projector(projector_type: str, in_features: int, out_features: int) -> nn.Sequential:
    """The vision -> text projector named like the reference (``linear``, ``mlp2x_gelu``, ...).

    Args:
        projector_type: ``"linear"`` or ``"mlp{N}x_gelu"``.
        in_features: width of the vision features.
        out_features: hidden size of the language model.

    Returns:
        ``nn.Sequential`` whose linear layers sit at even indices (keys ``0``, ``2``, ...), as in the
        released checkpoint's ``model.mm_projector.{0,2}``.
    """
    depth = projector_depth(projector_type)
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


class LlavaMedNet(nn.Module):
    """LLaVA-Med: images are encoded by CLIP, projected, and written into the text embeddings.

    The ``<image>`` placeholder is expanded at tokenisation time to ``config.num_image_tokens`` copies of
    ``config.image_token_id`` per image, so ``forward`` needs no per-sample loop: the projected features of
    all images of the batch (concatenated in order of appearance) replace the embeddings at the image-token
    positions with one ``masked_scatter``. Samples without images, and batches without any, are plain text.

    Args:
        config: the network's hyper-parameters (see :class:`LlavaMedConfig`).
    """

    def __init__(self, config: LlavaMedConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.vision_tower = build_vision_tower(config)
        text_kwargs = dict(config.text_config)
        text_config = AutoConfig.for_model(text_kwargs.pop("model_type"), **text_kwargs)
        self.language_model = AutoModelForCausalLM.from_config(text_config)
        self.projector = build_projector(
            config.projector_type, vision_width(self.vision_tower), text_config.hidden_size
        )

    def _apply(self, fn: Any, recurse: bool = True) -> LlavaMedNet:
        """``nn.Module._apply`` (behind ``.to``, ``.bfloat16()``, DeepSpeed's casts) keeping rotary frequencies fp32.

        Casting the whole module would round the rotary ``inv_freq`` buffers to bf16 (with v1.5's
        ``rope_theta`` 1e6 the cos table then drifts by up to 1.8 over 2048 positions); transformers'
        ``from_pretrained(dtype=...)`` keeps them in fp32, and so do we. Device moves still apply.
        """
        rotary = {n: b.float() for n, b in self.named_buffers() if n.endswith("inv_freq") and b.device.type != "meta"}
        super()._apply(fn, recurse)
        for name, fp32 in rotary.items():
            owner, _, leaf = name.rpartition(".")
            module = self.get_submodule(owner)
            module._buffers[leaf] = fp32.to(device=module._buffers[leaf].device)
        return self

    # --------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Device of the language model's embeddings."""
        return self.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the language model."""
        return self.language_model.get_input_embeddings().weight.dtype

    # ----------------------------------------------------------------------------------------------- encoding
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Project images to language-model embeddings.

        The selected features are average-pooled over ``token_pool x token_pool`` blocks of the patch grid
        before the projector (:func:`~.token_pooling.pool_patch_tokens`; nothing is done for ``token_pool=1``).
        An evaluation-mode tower (frozen, or at inference: each image's features independent of the others) runs
        once per distinct image (:func:`~.shared_prefix.unique_images`); the projector still sees all ``N``.

        Args:
            pixel_values: ``(N, 3, S, S)`` normalised images, or ``(N, 1, D, H, W)`` volumes for the 3-D tower.

        Returns:
            ``(N, num_image_tokens, hidden)`` features in the language model's dtype.
        """
        distinct = None if self.vision_tower.training else unique_images(pixel_values)
        if distinct is None:
            features = tower_features(self.vision_tower, pixel_values, self.config)
        else:
            first, inverse = distinct
            features = tower_features(self.vision_tower, pixel_values[first], self.config)[inverse]
        if not self.config.is_volume:
            features = pool_patch_tokens(features, self.config.patch_grid, self.config.token_pool,
                                         cls_token=self.config.vision_feature_select_strategy == "cls_patch")
        return self.projector(features.to(self.projector[0].weight.dtype)).to(self.dtype)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with image features written at the image-token positions.

        Args:
            input_ids: ``(B, L)`` token ids; ``image_token_id`` may lie outside the vocabulary.
            pixel_values: ``(N, 3, S, S)`` images of the whole batch in order of appearance, or ``None``.

        Raises:
            ValueError: when the number of image tokens does not match ``N * num_image_tokens``.
        """
        image_mask = input_ids == self.config.image_token_id
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        n_tokens = int(image_mask.sum())
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_tokens != n_images * self.config.num_image_tokens:
            raise ValueError(
                f"input_ids hold {n_tokens} image tokens but {n_images} image(s) x {self.config.num_image_tokens} "
                f"tokens per image were given; expand each <image> placeholder at tokenisation."
            )
        if n_images:
            features = self.encode_images(pixel_values)  # type: ignore[arg-type]
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward pass.

        Args:
            input_ids: ``(B, L)`` token ids with expanded image placeholders.
            attention_mask: ``(B, L)``, 1 for real tokens, 0 for padding.
            pixel_values: ``(N, 3, S, S)`` all images of the batch, or ``None``.
            labels: ``(B, L)`` targets, ``-100`` where not supervised; shifted inside the language model.
            kwargs: passed to the language model (``position_ids``, ``past_key_values``, ``use_cache``...).

        Returns:
            ``CausalLMOutputWithPast`` with ``loss`` (when ``labels`` is given) and ``logits``.
        """
        inputs_embeds = self.embed(input_ids, pixel_values)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        share_prefixes: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate answers for a left-padded batch of prompts.

        Rows whose prompts agree up to their last image token (questions about the same image) run that prefix
        once (:func:`~.shared_prefix.shared_prefix_inputs`); the answers are those of the plain batch.

        Args:
            input_ids: ``(B, L)`` prompt ids, left-padded.
            attention_mask: ``(B, L)``; padding must be on the left (a right-padded batch is refused).
            pixel_values: ``(N, 3, S, S)`` images of the batch, or ``None``.
            max_new_tokens: upper bound on generated tokens per sample.
            do_sample: sample instead of greedy decoding.
            temperature: sampling temperature (only with ``do_sample``).
            top_p: nucleus sampling mass (only with ``do_sample``).
            eos_token_id: stop token(s); defaults to the language model's EOS. Generation stops on EOS.
            pad_token_id: id written after a sample has finished; defaults to EOS.
            share_prefixes: run prefixes shared by several rows once (``False``: every row's whole prompt).
            kwargs: further ``transformers`` generation arguments (``top_k``, ``repetition_penalty``...);
                ``stopping_criteria`` (a ``StoppingCriteriaList``, called after every step with the tokens so far)
                goes to ``generate`` itself, which is how the server streams and stops each row on its own.

        Returns:
            ``(B, T)`` the new tokens only (``T <= max_new_tokens``), padded with ``pad_token_id``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate() needs left-padded prompts: the last column of attention_mask has padding.")
        text_config = self.language_model.config
        eos = text_config.eos_token_id if eos_token_id is None else eos_token_id
        pad = pad_token_id if pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        stopping_criteria = kwargs.pop("stopping_criteria", None)
        generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=text_config.bos_token_id,
            **sampling,
            **kwargs,
        )
        inputs_embeds = self.embed(input_ids, pixel_values)
        cache: dict[str, Any] = {}
        shared = shared_prefix_inputs(self.language_model, input_ids, attention_mask, inputs_embeds,
                                      self.config.image_token_id) if share_prefixes else None
        if shared is not None:
            inputs_embeds, attention_mask, cache[cache_argument(self.language_model)] = shared
        return self.language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            stopping_criteria=stopping_criteria,
            **cache,
        )

    # ------------------------------------------------------------------------------------------------ training
    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Switch activation checkpointing of the language model (and of a trainable vision tower)."""
        for part in (self.language_model, self.vision_tower):
            if enable:
                part.activation_checkpointing_enable({"use_reentrant": False})
            else:
                part.activation_checkpointing_disable()
        if enable:
            # Frozen embeddings would otherwise cut the graph at the first checkpointed block.
            self.language_model.enable_input_require_grads()

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        """The three trainable parts by name: ``vision``, ``projector``, ``language_model``."""
        yield "vision", self.vision_tower
        yield "projector", self.projector
        yield "language_model", self.language_model


def set_trainable(model: LlavaMedNet, vision: bool, projector: bool, language_model: bool) -> LlavaMedNet:
    """Freeze or unfreeze each part of the network.

    Args:
        model: the network, changed in place.
        vision: train the CLIP tower (LLaVA never does; it then runs under ``no_grad``).
        projector: train the projector.
        language_model: train the language model.

    Returns:
        ``model``, for chaining.
    """
    wanted = {"vision": vision, "projector": projector, "language_model": language_model}
    for name, part in model.parts():
        part.requires_grad_(wanted[name])
    return model


def configure_stage(model: LlavaMedNet, stage: str, train_vision: bool = False) -> LlavaMedNet:
    """Freeze the network for a stage of the recipe: ``stage1``, ``stage2``, ``finetune`` or ``inference``.

    Args:
        model: the network, changed in place.
        stage: the stage (see :data:`STAGES`; the vision tower is frozen in every one).
        train_vision: train the vision tower too (a randomly initialised 3-D tower needs it).
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {sorted(STAGES)}.")
    return set_trainable(model, **{**STAGES[stage], **({"vision": True} if train_vision else {})})
