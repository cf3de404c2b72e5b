# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Applications built on the library.

* :mod:`monai_llava_med.apps.chat` -- a terminal chat about one image at a time;
* :mod:`monai_llava_med.apps.monailabel` -- a MONAI Label server app;
* :mod:`monai_llava_med.apps.serve` -- an OpenAI-compatible HTTP server with a web page (``serve`` extra);
* :mod:`monai_llava_med.apps.deploy` -- MONAI Deploy App SDK operators and an example app (``.venv-deploy``).
* :mod:`monai_llava_med.apps.pacs` -- a PACS node: DICOMweb one-shot and a C-STORE listener (``pacs`` extra).
"""

from __future__ import annotations

__all__: list[str] = []
