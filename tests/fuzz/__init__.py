# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The project's fuzz harness over the loading entry point (``MedicalImageToPixels``).

Seeds are generated here (:mod:`.seeds`), mutated by Hypothesis strategies (:mod:`.mutations`), and each input runs
in a forked child under a time and memory limit (:mod:`.runner`). ``make fuzz`` runs a long campaign
(``python -m fuzz`` with ``tests`` on ``PYTHONPATH``); ``test_fuzz_short.py`` runs a short one inside ``make test``.
"""
