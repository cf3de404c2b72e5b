# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Which series of a study the model answers about: rules on modality, body part and series description.

The same rules serve both modes of the PACS node: the one-shot mode applies them to the series a DICOMweb QIDO
search returns, the listener to the headers of the instances it received.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["DEFAULT_EXCLUDE_DESCRIPTION", "DEFAULT_MODALITIES", "QIDO_FIELDS", "SelectionRules", "SeriesInfo", "select_series",
           "series_from_headers", "series_from_qido"]

DEFAULT_MODALITIES = ("CT", "MR", "CR", "DX")
# scouts, localisers, dose reports and other non-diagnostic series, matched case-insensitively
DEFAULT_EXCLUDE_DESCRIPTION = r"scout|locali[sz]er|topogram|surview|dose|screen ?save|report"


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at in one series.

    Args:
        series_uid: the Series Instance UID.
        modality: Modality (0008,0060), upper case ("" when absent).
        body_part: Body Part Examined (0018,0015), upper case ("" when absent).
        description: Series Description (0008,103E) ("" when absent).
        number: Series Number (0 when absent).
        n_instances: instances in the series.
    """

    series_uid: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    number: int = 0
    n_instances: int = 0


@dataclass(frozen=True)
class SelectionRules:
    """Rules a series must pass to be answered about; the best ``max_series`` passing ones are chosen.

    Args:
        modalities: accepted modalities (empty: any).
        body_parts: accepted Body Part Examined values (empty: any; a series without the attribute passes only
            when this is empty).
        include_description: a regular expression the Series Description must match (``re.search``,
            case-insensitive; None: any).
        exclude_description: a regular expression that rejects a series whose description matches it (None: none).
        min_instances: fewest instances a series needs.
        max_series: how many passing series are answered about (the largest first, then the lowest Series Number).
    """

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    body_parts: tuple[str, ...] = ()
    include_description: str | None = None
    exclude_description: str | None = DEFAULT_EXCLUDE_DESCRIPTION
    min_instances: int = 1
    max_series: int = 1
    _compiled: dict[str, re.Pattern[str] | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(m.upper() for m in self.modalities))
        object.__setattr__(self, "body_parts", tuple(b.upper() for b in self.body_parts))
        if self.max_series < 1 or self.min_instances < 1:
            raise ValueError("max_series and min_instances must be at least 1")
        for name in ("include_description", "exclude_description"):
            pattern = getattr(self, name)
            self._compiled[name] = re.compile(pattern, re.IGNORECASE) if pattern else None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SelectionRules:
        """Rules from a mapping with the field names (a JSON config); missing keys keep their defaults.

        Args:
            values: ``{"modalities": [...], "body_parts": [...], "include_description": ..., ...}``.
        """
        known = {"modalities", "body_parts", "include_description", "exclude_description", "min_instances",
                 "max_series"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown selection rule(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(values)
        for key in ("modalities", "body_parts"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def accepts(self, series: SeriesInfo) -> bool:
        """Whether one series passes every rule."""
        if self.modalities and series.modality not in self.modalities:
            return False
        if self.body_parts and series.body_part not in self.body_parts:
            return False
        include, exclude = self._compiled["include_description"], self._compiled["exclude_description"]
        if include is not None and not include.search(series.description):
            return False
        if exclude is not None and exclude.search(series.description):
            return False
        return series.n_instances >= self.min_instances


def select_series(series: Iterable[SeriesInfo], rules: SelectionRules) -> list[SeriesInfo]:
    """The series to answer about: those passing ``rules``, the largest first (ties: lowest Series Number).

    Args:
        series: the study's series.
        rules: the selection rules.

    Returns:
        at most ``rules.max_series`` series; empty when none passes.
    """
    passing = [s for s in series if rules.accepts(s)]
    passing.sort(key=lambda s: (-s.n_instances, s.number, s.series_uid))
    return passing[: rules.max_series]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def series_from_headers(headers: Sequence[Dataset]) -> list[SeriesInfo]:
    """One :class:`SeriesInfo` per series of the given instance headers (the first instance's values).

    Args:
        headers: instance datasets (pixel data not needed).
    """
    groups: dict[str, list[Dataset]] = {}
    for ds in headers:
        groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append(ds)
    return [
        SeriesInfo(uid, _text(group[0], "Modality").upper(), _text(group[0], "BodyPartExamined").upper(),
                   _text(group[0], "SeriesDescription"), _number(group[0].get("SeriesNumber")), len(group))
        for uid, group in groups.items()
        if uid
    ]


# QIDO-RS attributes the rules need (requested with includefield)
QIDO_FIELDS = ("Modality", "BodyPartExamined", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")


def series_from_qido(results: Sequence[Mapping[str, Any]]) -> list[SeriesInfo]:
    """One :class:`SeriesInfo` per series of a QIDO-RS series search (DICOM JSON).

    Args:
        results: the search results (``DICOMwebClient.search_for_series``).
    """
    out = []
    for item in results:
        ds = Dataset.from_json(dict(item))
        uid = _text(ds, "SeriesInstanceUID")
        if uid:
            out.append(SeriesInfo(uid, _text(ds, "Modality").upper(), _text(ds, "BodyPartExamined").upper(),
                                  _text(ds, "SeriesDescription"), _number(ds.get("SeriesNumber")),
                                  _number(ds.get("NumberOfSeriesRelatedInstances"))))
    return out
