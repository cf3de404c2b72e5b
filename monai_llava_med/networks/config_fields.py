# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checks of single config fields (an integer in a range, a ``(D, H, W)`` triple) with messages that name the
field and show at most 40 characters of the value."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError

__all__ = ["show_value", "check_int", "check_triple"]


def show_value(value: Any) -> str:
    """``repr(value)`` cut to 40 characters (a config from someone else's folder may hold anything)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(where: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``.

    Args:
        where: the field's name in messages (``text_config.vocab_size``).
        value: what the config holds.
        low: smallest allowed value.
        high: largest allowed value.

    Raises:
        CheckpointError: naming ``where``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{where} must be an integer, got {show_value(value)}")
    if not low <= value <= high:
        raise CheckpointError(f"{where} = {value} is outside [{low}, {high}]")
    return value


def check_triple(where: str, value: Any, low: int, high: int) -> tuple[int, int, int]:
    """``value`` as 3 integers ``(D, H, W)``, each in ``[low, high]``.

    Args:
        where: the field's name in messages.
        value: a list or tuple of 3 integers.
        low: smallest allowed value of each.
        high: largest allowed value of each.

    Raises:
        CheckpointError: naming ``where`` (and the index of a bad item).
    """
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise CheckpointError(f"{where} must be 3 integers (D, H, W), got {show_value(value)}")
    return tuple(check_int(f"{where}[{i}]", v, low, high) for i, v in enumerate(value))  # type: ignore[return-value]
