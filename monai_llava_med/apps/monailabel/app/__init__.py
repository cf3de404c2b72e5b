# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The ready MONAI Label app folder (pass this folder to ``monailabel.main start_server --app``).

MONAI Label loads ``main.py`` from here by path; this file only makes the folder ship with the package.
"""

from __future__ import annotations

__all__: list[str] = []
