# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Write models/model.pt, the MONAI bundle convention's weights file, from models/model.safetensors.

``model.pt`` is the state dict of the bundle's ``network_def`` (``torch.save``), the file MONAI's bundle
specification and model-zoo's ``ci/verify_bundle.py`` expect; the bundle itself loads ``model.safetensors``
through ``load_pretrained``. Both hold the same tensors (``tests/test_bundle_zoo.py`` checks it).

Usage, from bundles/llava_med: ``python scripts/export_model_pt.py`` (the same bytes every time).
"""

from __future__ import annotations

from pathlib import Path

import torch

from monai_llava_med.networks import load_pretrained


def main(models: Path = Path("models")) -> Path:
    """Save the state dict of the network in ``models`` as ``models/model.pt``; returns the path."""
    network, _ = load_pretrained(models, dtype=torch.float32, device="cpu")
    target = models / "model.pt"
    torch.save({k: v.contiguous() for k, v in network.state_dict().items()}, target)
    return target


if __name__ == "__main__":
    print(main())
