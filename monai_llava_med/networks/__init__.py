# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The LLaVA-Med network, its config and presets, and checkpoint I/O.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

from monai_llava_med.constants import CLIP_MEAN, CLIP_STD

_SUBMODULE_ATTRS = {
    "checkpoint": [
        "assemble_from_parts", "config_from_folder", "convert_state_dict", "detect_layout", "export_hf_llava",
        "load_pretrained", "load_state_dict_strict", "read_state_dict", "save_pretrained",
    ],
    "config": [
        "CONFIG_NAME", "VIEW_OPTIONS", "LlavaMedConfig", "monai_resnet3d_config", "monai_vit3d_config",
        "projector_depth",
    ],
    "config_checks": ["check_config_values", "estimate_parameters"],
    "factory": ["build_llava_med", "default_dtype", "resolve_device", "resolve_dtype", "resolve_placement"],
    "llava_med": ["STAGES", "LlavaMedNet", "build_projector", "configure_stage", "set_trainable"],
    "token_pooling": ["pool_patch_tokens", "pooled_token_count"],
    "resnet3d_tower": ["MonaiResNet3DTower", "map_resnet_weights"],
    "vision_towers": ["MonaiViT3DTower", "build_vision_tower", "load_vision_weights", "map_vision_weights"],
}

__getattr__, _lazy_dir, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = ["CLIP_MEAN", "CLIP_STD", *_lazy_all]


def __dir__() -> list[str]:
    """The public names, eager and lazy."""
    return list(__all__)
