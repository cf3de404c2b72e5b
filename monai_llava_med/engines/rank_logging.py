# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Training output said once, on rank 0.

Without this, a 2-rank run prints every INFO line twice, each rank's ``StatsHandler`` logs the loss, torch's
``all_gather_into_tensor`` / ``reduce_scatter_tensor`` FutureWarnings (raised from inside DeepSpeed's ZeRO
step, not our code) appear at every optimizer step on every rank, and MONAI's "nvImageCodec is not available" warning once per ``LoadImage``
built in every process. :func:`quiet_ranks` silences exactly these: the FutureWarnings by message and
module, the nvImageCodec line after its first appearance on rank 0, and on other ranks everything below
WARNING from this package, Ignite's engine loggers and DeepSpeed. :func:`rank_zero_handlers` drops the
handlers that only print (``StatsHandler``, ``TensorBoardStatsHandler``) on ranks other than 0, as MONAI's
multi-GPU bundles do.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["quiet_ranks", "rank_zero_handlers"]

_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


class _FirstOnly(logging.Filter):
    """Let a record through the first time its message is seen in this process (none at all when ``mute``)."""

    def __init__(self, mute: bool) -> None:
        super().__init__()
        self.mute = mute
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.mute or message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_ranks(rank: int) -> None:
    """Install the filters described in the module docstring for this process (``rank`` from the launcher).

    Calling it again (a second trainer in the same process) changes nothing.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning,
        module=r"torch\.distributed\.c10d_logger",
    )
    codec = logging.getLogger(_NVIMGCODEC_LOGGER)
    if not any(isinstance(f, _FirstOnly) for f in codec.filters):
        codec.addFilter(_FirstOnly(mute=rank != 0))
    if rank != 0:
        for name in ("monai_llava_med", "ignite.engine", "DeepSpeed", "deepspeed"):
            logging.getLogger(name).setLevel(logging.WARNING)


def rank_zero_handlers(handlers: Sequence[Any] | None, rank: int) -> list[Any]:
    """``handlers`` without the ones that only print (MONAI's stats and TensorBoard handlers) on ranks > 0."""
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    handlers = list(handlers or [])
    if rank == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, (StatsHandler, TensorBoardStatsHandler))]
