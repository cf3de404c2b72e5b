# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""monai-llava-med: LLaVA-Med as a MONAI plugin.

Subpackages are imported lazily so that ``import monai_llava_med`` stays cheap:
``monai_llava_med.networks``, ``.transforms``, ``.data``, ``.conversation``, ``.engines``,
``.metrics`` and ``.apps`` are loaded on first attribute access (``monai_llava_med.networks.LlavaMedNet``),
and each of them loads its modules only when one of its names is used. The layers and the import rules
between them are in ``docs/architecture.md``.
"""

from __future__ import annotations

import lazy_loader as _lazy

from . import errors as _errors
from .errors import *  # noqa: F401,F403

__version__ = "0.1.0"

__getattr__, _lazy_dir, _lazy_all = _lazy.attach(
    __name__, submodules=["apps", "constants", "conversation", "data", "engines", "metrics", "networks", "transforms"]
)
__all__ = [*_errors.__all__, *_lazy_all]


def __dir__() -> list[str]:
    """The public names, eager and lazy."""
    return list(__all__)
