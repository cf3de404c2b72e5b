# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What one run of the MONAI Deploy app produced: the SR files written, or the typed error that stopped it.

The operators of :mod:`.app` share one :class:`DeployOutcome`. An operator that meets bad input records the typed
error here and emits nothing, so the graph stops cleanly (no operator left to run) instead of failing with the
Holoscan executor's own traceback; the command line then prints the one-line error and exits 1. This module does
not import the SDK.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import LlavaMedInputError

__all__ = ["DeployOutcome"]

logger = logging.getLogger(__name__)


@dataclass
class DeployOutcome:
    """The result of one app run, filled in by its operators.

    Attributes:
        sr_files: the SR files written, in order.
        error: the first typed error that stopped the run, if any.
    """

    sr_files: list[Path] = field(default_factory=list)
    error: LlavaMedInputError | None = None

    def fail(self, err: LlavaMedInputError) -> None:
        """Record ``err`` (the first one wins) and log it: the class and the message, which name the file and the
        cause and never quote header values (see :mod:`monai_llava_med.errors`)."""
        logger.error("%s: %s", type(err).__name__, err)
        if self.error is None:
            self.error = err
