# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI Label app: ask LLaVA-Med about the image being annotated.

Start (in the ``.venv-label`` environment, see ``docs/monailabel.md``)::

    python -m monailabel.main start_server --app monai_llava_med/apps/monailabel/app \\
        --studies STUDIES_DIR --conf models llava_med --host 127.0.0.1

MONAI Label picks the ``MONAILabelApp`` subclass found in this module: :class:`LlavaMedLabelApp`.
"""

from __future__ import annotations

from monai_llava_med.apps.monailabel.label_app import LlavaMedLabelApp

__all__ = ["LlavaMedLabelApp"]
