# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A terminal chat with LLaVA-Med about one medical image at a time.

``python -m monai_llava_med.apps.chat IMAGE [--model_dir DIR] [--max_new_tokens N]`` (or the ``llava-med-chat``
console script) loads the model once, then answers questions about the image, streaming each answer as it is
generated; earlier turns go into the next prompt. ``/image PATH`` switches image, ``/views DIR`` saves the views the
model sees as PNG, ``/reset`` starts over, ``/help`` lists the commands, Ctrl-D or ``/quit`` leaves.

Modules: :mod:`.session` (the image, the turns, the answers: the product's ``PrepareVqaItem`` and
:func:`~monai_llava_med.engines.streaming.stream_generate`, as the server uses them), :mod:`.console` (the prompt,
the commands), :mod:`.input_checks` (the chat's own checks, the one-line errors), :mod:`.__main__` (the command
line). See ``docs/serve.md``.
"""

from __future__ import annotations

import lazy_loader as _lazy

# names are imported on first use, so ``--help`` answers before torch is loaded
__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs={
    "session": ["ChatSession"], "console": ["ChatConsole"], "input_checks": ["check_image_path", "error_line"],
})
__all__ = list(_lazy_all)
