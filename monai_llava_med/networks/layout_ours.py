# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Our own layout: ``llava_med_config.json`` + ``model.safetensors`` (or shards + index) + the tokenizer.

The weights carry :class:`~monai_llava_med.networks.LlavaMedNet`'s own parameter names, so no key map is
needed; training exports and :func:`save_pretrained` write it.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

from .checkpoint_files import save_weights, staged_folder
from .config import CONFIG_NAME
from .llava_med import LlavaMedNet

__all__ = ["save_pretrained"]


def save_pretrained(
    model: LlavaMedNet, out_dir: str | PathLike, tokenizer: Any = None, max_shard_size: int | str = "5GB"
) -> Path:
    """Write the network in our layout: ``llava_med_config.json``, safetensors weights and the tokenizer.

    Files are written to a staging folder and moved into place one by one, the config last; weight shards of
    an earlier save that this one does not write are removed.

    Args:
        model: the network.
        out_dir: destination folder (created).
        tokenizer: optional tokenizer saved beside the weights (``load_pretrained`` needs one).
        max_shard_size: shard the weights above this size (``"5GB"``, or bytes).
    """
    from ..conversation.tokenizer import save_tokenizer

    with staged_folder(out_dir) as staging:
        save_weights(dict(model.state_dict()), staging, max_shard_size)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)
        model.config.save(staging / CONFIG_NAME)
    return Path(out_dir)
