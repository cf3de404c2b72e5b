# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""monai-llava-med: LLaVA-Med as a MONAI plugin.

Subpackages are imported lazily so that ``import monai_llava_med`` stays cheap:
``monai_llava_med.networks``, ``.transforms``, ``.data``, ``.conversation``, ``.engines``,
``.metrics`` and ``.apps``.
"""

from __future__ import annotations

from .errors import *  # noqa: F401,F403

__version__ = "0.1.0"
