# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The LLaVA-Med network, its config and presets, and checkpoint I/O."""

from __future__ import annotations

from .checkpoint import (
    assemble_from_parts,
    config_from_folder,
    convert_state_dict,
    detect_layout,
    export_hf_llava,
    load_pretrained,
    load_state_dict_strict,
    read_state_dict,
    save_pretrained,
)
from .config import CLIP_MEAN, CLIP_STD, CONFIG_NAME, LlavaMedConfig, projector_depth
from .config_checks import check_config_values, estimate_parameters
from .factory import build_llava_med, default_dtype, resolve_device, resolve_dtype, resolve_placement
from .llava_med import STAGES, LlavaMedNet, build_projector, configure_stage, set_trainable

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CONFIG_NAME",
    "LlavaMedConfig",
    "LlavaMedNet",
    "STAGES",
    "assemble_from_parts",
    "build_llava_med",
    "config_from_folder",
    "convert_state_dict",
    "detect_layout",
    "export_hf_llava",
    "load_pretrained",
    "load_state_dict_strict",
    "read_state_dict",
    "save_pretrained",
    "build_projector",
    "check_config_values",
    "estimate_parameters",
    "resolve_device",
    "resolve_dtype",
    "resolve_placement",
    "configure_stage",
    "default_dtype",
    "projector_depth",
    "set_trainable",
]
