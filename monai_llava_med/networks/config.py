# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The serialisable configuration of a LLaVA-Med network, with presets."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

from ..constants import CLIP_MEAN, CLIP_STD, VIEW_MODES
from ..errors import CheckpointError
from .config_checks import check_config_values
from .config_presets import (
    clip_vit_l14_336_config,
    mistral_7b_instruct_config,
    monai_resnet3d_config,
    monai_vit3d_config,
)
from .config_volume import check_volume_feature_layer, is_volume_config, volume_geometry

__all__ = [
    "LlavaMedConfig",
    "CLIP_MEAN",
    "CLIP_STD",
    "CONFIG_NAME",
    "PROJECTOR_PATTERN",
    "VIEW_OPTIONS",
    "clip_vit_l14_336_config",
    "mistral_7b_instruct_config",
    "monai_vit3d_config",
    "monai_resnet3d_config",
    "projector_depth",
]

CONFIG_NAME = "llava_med_config.json"
#: ``linear`` or ``mlp{N}x_gelu`` (N linear layers with GELU between them), the reference's projector names.
PROJECTOR_PATTERN = re.compile(r"^(linear|mlp(\d{1,6})x_gelu)$")
MAX_PROJECTOR_DEPTH = 16
_SELECT_STRATEGIES = ("patch", "cls_patch")
_TEXT_MODEL_TYPES = ("mistral", "llama")
#: Fields that set what the model sees of a volume but no weight shape (:meth:`LlavaMedConfig.with_view_options`).
VIEW_OPTIONS = ("token_pool", "max_views", "view_mode")


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector named ``linear`` or ``mlp{N}x_gelu``.

    Raises:
        CheckpointError: (a ``ValueError``) for any other name.
    """
    match = PROJECTOR_PATTERN.match(projector_type) if isinstance(projector_type, str) else None
    if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= MAX_PROJECTOR_DEPTH):
        raise CheckpointError(
            f"projector_type must be 'linear' or 'mlp<N>x_gelu' (1 <= N <= {MAX_PROJECTOR_DEPTH}), "
            f"got {projector_type!r:.40}."
        )
    return 1 if match.group(2) is None else int(match.group(2))


@dataclass
class LlavaMedConfig:
    """Hyper-parameters of :class:`~monai_llava_med.networks.LlavaMedNet`.

    Args:
        vision_config: keyword arguments of ``transformers.CLIPVisionConfig`` (the vision encoder), or, with
            ``model_type: "monai_vit3d"`` or ``"monai_resnet3d"``, of a native 3-D tower (:func:`monai_vit3d_config`,
            :func:`monai_resnet3d_config`), which takes ``(N, 1, D, H, W)`` volumes.
        text_config: keyword arguments of the causal language model's config; ``model_type`` selects the
            architecture (``"mistral"`` or ``"llama"``).
        vision_feature_layer: index into the vision encoder's hidden states whose output is projected
            (LLaVA uses the penultimate layer, ``-2``).
        vision_feature_select_strategy: ``"patch"`` drops the CLS token (LLaVA's choice, 576 tokens at
            336 px), ``"cls_patch"`` keeps it.
        projector_type: ``"linear"`` or ``"mlp{N}x_gelu"`` (v1.5 uses ``"mlp2x_gelu"``).
        image_token_id: the token id that stands for one image feature in ``input_ids``. It may lie outside
            the language model's vocabulary (the released checkpoint has 32000 rows and ``<image>`` = 32000).
        image_token: the text of the image placeholder.
        image_mean: per-channel mean used to normalise pixels (and the pad colour of "pad" mode).
        image_std: per-channel standard deviation used to normalise pixels.
        image_aspect_ratio: ``"pad"`` (paste onto a mean-coloured square first, LLaVA-Med v1.5) or ``"resize"``
            (squash to the square); read by the image pipeline through :attr:`pad_to_square` and by the HF
            export (``do_pad``).
        token_pool: side ``k`` of the ``k x k`` average pooling of the vision tower's patch grid before the
            projector (1: none). It must divide the grid (``image_size // patch_size``; v1.5: 24, so 1, 2, 3, 4,
            6, 8, 12 or 24); v1.5 with 2 gives 576 -> 144 tokens per view. A CLS token (``"cls_patch"``) is kept
            unpooled in front. Parameter-free: a pooled model has the same weights as an unpooled one, but its
            projector is trained on pooled features (:mod:`~monai_llava_med.networks.token_pooling`).
        max_views: default number of views of a volume (tiles of a slide) in the image pipeline built from
            this config (``pixels_from_config``); the context still caps it (``model_max_length`` minus the text
            reserve, divided by :attr:`num_image_tokens`), and an explicit ``max_views=`` wins.
        view_mode: default view selection of that pipeline: ``"axial"``, ``"central"``, ``"content"``
            (skips slices of air), ``"triplanar"`` or ``"montage"``; an explicit ``view_mode=`` wins.
        model_max_length: the context length the tokenizer truncates to.
        template: the conversation template the model was trained with.
        name: a short human-readable model name, reported with answers.
    """

    vision_config: dict[str, Any] = field(default_factory=clip_vit_l14_336_config)
    text_config: dict[str, Any] = field(default_factory=mistral_7b_instruct_config)
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "patch"
    projector_type: str = "mlp2x_gelu"
    image_token_id: int = 32000
    image_token: str = "<image>"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    image_aspect_ratio: str = "pad"
    token_pool: int = 1
    max_views: int = 4
    view_mode: str = "axial"
    model_max_length: int = 2048
    template: str = "mistral_instruct"
    name: str = "llava-med"

    def __post_init__(self) -> None:
        self.vision_config = dict(self.vision_config)
        self.text_config = dict(self.text_config)
        for name in ("image_mean", "image_std"):
            try:
                values = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{name} must be 3 numbers, got {getattr(self, name)!r:.40}") from err
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise CheckpointError(f"{name} must be 3 finite numbers, got {values!r:.60}")
            setattr(self, name, values)
        self.validate()

    # ----------------------------------------------------------------------------------------------- derived
    @property
    def is_volume(self) -> bool:
        """Whether the vision tower is the native 3-D one (it takes volumes, not 2-D views)."""
        return is_volume_config(self.vision_config)

    @property
    def volume_size(self) -> tuple[int, int, int] | None:
        """``(D, H, W)`` of the volumes a 3-D tower takes; ``None`` for a 2-D tower."""
        if not self.is_volume:
            return None
        d, h, w = (int(v) for v in self.vision_config["img_size"])
        return d, h, w

    @property
    def image_size(self) -> int:
        """Side length in pixels of the square images the vision encoder takes (3-D tower: the largest side of
        :attr:`volume_size`)."""
        if self.is_volume:
            return max(int(v) for v in self.vision_config["img_size"])
        return int(self.vision_config.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        """Side length of one vision patch (3-D tower: the in-plane voxels of one grid cell, the last of its
        ``stride``)."""
        if self.is_volume:
            return int(volume_geometry(self.vision_config)["stride"][-1])
        return int(self.vision_config.get("patch_size", 32))

    @property
    def patch_grid(self) -> int:
        """Patches per side of the vision tower's grid (v1.5: 24)."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Number of ``image_token_id`` tokens (= projected features) each image (view) or volume contributes,
        after :attr:`token_pool` (v1.5: 576; 144 with ``token_pool=2``; 64 with 3; the 3-D tower: its pooled grid)."""
        if self.is_volume:
            return math.prod(volume_geometry(self.vision_config)["tokens"])
        cls_token = self.vision_feature_select_strategy == "cls_patch"
        return (self.patch_grid // self.token_pool) ** 2 + int(cls_token)

    @property
    def pad_to_square(self) -> bool:
        """``image_aspect_ratio == "pad"``: paste each image onto a square canvas of the mean colour before
        resizing (LLaVA-Med v1.5); otherwise the image is resized to the square directly. The image pipeline
        built from this config takes it as ``pad=`` (:class:`~monai_llava_med.transforms.ImageToClipPixels`)."""
        return self.image_aspect_ratio == "pad"

    @property
    def projector_depth(self) -> int:
        """Number of linear layers in the projector."""
        return projector_depth(self.projector_type)

    @property
    def text_model_type(self) -> str:
        """``model_type`` of the language model."""
        return str(self.text_config.get("model_type", "mistral"))

    # ----------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`ValueError` when the hyper-parameters cannot build a network.

        Types and ranges of every size field are checked first (:func:`~.config_checks.check_config_values`,
        a :class:`~monai_llava_med.errors.CheckpointError` naming the field); the memory a config needs is
        checked by the factory, which knows the device.
        """
        check_config_values(self)
        if min(self.image_std) <= 0:
            raise CheckpointError(f"image_std must be > 0, got {self.image_std}")
        projector_depth(self.projector_type)
        if self.vision_feature_select_strategy not in _SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.text_model_type not in _TEXT_MODEL_TYPES:
            raise ValueError(f"text_config.model_type must be one of {_TEXT_MODEL_TYPES}, got {self.text_model_type!r}.")
        if self.is_volume:
            if self.vision_feature_select_strategy != "patch":
                raise CheckpointError("the 3-D tower has no CLS token: vision_feature_select_strategy must be 'patch'")
        elif self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
        if self.is_volume:
            check_volume_feature_layer(self.vision_config, self.vision_feature_layer)
        else:
            layers = int(self.vision_config.get("num_hidden_layers", 12))
            if not -layers - 1 <= self.vision_feature_layer <= layers:
                raise ValueError(f"vision_feature_layer {self.vision_feature_layer} is outside the {layers}-layer "
                                 "encoder.")
        if self.image_token_id < 0:
            raise ValueError(f"image_token_id must be >= 0, got {self.image_token_id}.")
        if self.image_aspect_ratio not in ("pad", "resize"):
            raise ValueError(f"image_aspect_ratio must be 'pad' or 'resize', got {self.image_aspect_ratio!r}.")
        if self.is_volume and self.token_pool != 1:
            raise CheckpointError(
                f"token_pool = {self.token_pool} pools a 2-D patch grid; the 3-D tower pools its own token grid "
                "(vision_config['pool']): leave token_pool at 1"
            )
        if self.patch_grid % self.token_pool:
            raise CheckpointError(
                f"token_pool = {self.token_pool} does not divide the {self.patch_grid} x {self.patch_grid} patch grid "
                f"(image_size {self.image_size} / patch_size {self.patch_size})"
            )
        if self.view_mode not in VIEW_MODES:
            raise CheckpointError(f"view_mode must be one of {VIEW_MODES}, got {self.view_mode!r:.40}")

    def with_view_options(self, **values: Any) -> LlavaMedConfig:
        """A checked copy with some of :data:`VIEW_OPTIONS` replaced (a ``None`` value keeps the current one).

        These fields change how many tokens a view costs and which views are taken, never a weight's shape, so
        they may be set on a loaded checkpoint (``load_pretrained(..., view_options=...)``), e.g. ``token_pool=2``
        on the released v1.5 weights before training its projector on pooled features.

        Raises:
            CheckpointError: for another field, or a value the checks refuse.
        """
        unknown = sorted(set(values) - set(VIEW_OPTIONS))
        if unknown:
            raise CheckpointError(f"only {list(VIEW_OPTIONS)} can be set on a loaded model, got {unknown}")
        out = self.to_dict()
        out.update({k: v for k, v in values.items() if v is not None})
        return type(self).from_dict(out)

    # ------------------------------------------------------------------------------------------------ serialise
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the config."""
        out = asdict(self)
        out["image_mean"] = list(self.image_mean)
        out["image_std"] = list(self.image_std)
        return copy.deepcopy(out)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LlavaMedConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are rejected with their names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown LlavaMedConfig fields: {unknown}.")
        return cls(**copy.deepcopy(values))

    def save(self, path: str | PathLike) -> Path:
        """Write the config as JSON; ``path`` may be a folder (then ``llava_med_config.json`` inside it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | PathLike) -> LlavaMedConfig:
        """Read a config written by :meth:`save` (a JSON file or a folder holding ``llava_med_config.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            values = json.loads(path.read_text())
            return cls.from_dict(values)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise CheckpointError(f"cannot read a LlavaMedConfig: {err}", path) from err

    # ------------------------------------------------------------------------------------------------- presets
    @classmethod
    def v1_5(cls, **overrides: Any) -> LlavaMedConfig:
        """LLaVA-Med v1.5: Mistral-7B-Instruct-v0.2 + CLIP ViT-L/14-336 + ``mlp2x_gelu`` (576 image tokens)."""
        values: dict[str, Any] = {"name": "llava-med-v1.5-mistral-7b"}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def tiny(cls, **overrides: Any) -> LlavaMedConfig:
        """A randomly initialisable model of a few hundred thousand parameters for tests (16 image tokens)."""
        values: dict[str, Any] = {
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
            },
            "text_config": {
                "model_type": "mistral",
                "vocab_size": 1000,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 2048,
                "rope_theta": 10000.0,
                "tie_word_embeddings": False,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "image_token_id": 999,
            "model_max_length": 512,
            "name": "llava-med-tiny",
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def tiny_3d(cls, **overrides: Any) -> LlavaMedConfig:
        """:meth:`tiny` with the small native 3-D tower (:func:`monai_vit3d_config`, 64 tokens per volume)."""
        values: dict[str, Any] = {
            "vision_config": monai_vit3d_config(),
            "vision_feature_layer": -1,
            "name": "llava-med-tiny-3d",
        }
        values.update(overrides)
        return cls.tiny(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LlavaMedConfig:
        """A preset by name: ``"v1.5"`` (alias ``"llava-med-v1.5-mistral-7b"``), ``"tiny"`` or ``"tiny_3d"``."""
        presets = {"v1.5": cls.v1_5, "v1_5": cls.v1_5, "llava-med-v1.5-mistral-7b": cls.v1_5, "tiny": cls.tiny,
                   "tiny_3d": cls.tiny_3d}
        if name not in presets:
            raise ValueError(f"Unknown LlavaMedConfig preset {name!r}; choose from {sorted(presets)}.")
        return presets[name](**overrides)
