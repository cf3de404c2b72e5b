# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The dictionary wrapper shared by the path -> model-input pipelines (2-D views and 3-D volumes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["PathToPixelsd", "pixel_record"]


def pixel_record(pixels: Any, views: list[dict], meta: Mapping[str, Any], path: str | PathLike) -> dict[str, Any]:
    """The result of a path pipeline: ``pixel_values``, ``views``, ``modality``, ``source`` (file name only) and
    ``window``, and nothing else (no header value reaches it).

    Args:
        pixels: the model input.
        views: one description per image (slice index / plane, tile, or the volume's axes).
        meta: metadata of the loaded image (``modality``, ``window``).
        path: the input path.
    """
    return {
        "pixel_values": pixels,
        "views": views,
        "modality": str(meta.get("modality", "OT")),
        "source": Path(path).name,
        "window": meta.get("window"),
    }


class PathToPixelsd(MapTransform):
    """For each path under ``keys``, write the pipeline's ``{prefix}pixel_values``, ``{prefix}views``,
    ``{prefix}modality``, ``{prefix}source`` and ``{prefix}window`` into the dictionary.

    Subclasses name the pipeline in :attr:`pipeline_class`.

    Args:
        keys: keys holding paths.
        output_prefix: prefix of the written keys; ``None`` -> ``""`` for one key, ``"{key}_"`` for several.
        allow_missing_keys: do not raise for missing keys.
        kwargs: arguments of the pipeline.
    """

    pipeline_class: ClassVar[Callable[..., Callable[[Any], dict]]]

    def __init__(self, keys: KeysCollection, output_prefix: str | None = None, allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_prefix = output_prefix
        self.transform = self.pipeline_class(**kwargs)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            if self.output_prefix is not None:
                prefix = self.output_prefix
            else:
                prefix = "" if len(self.keys) == 1 else f"{key}_"
            for name, value in self.transform(d[key]).items():
                d[f"{prefix}{name}"] = value
        return d
