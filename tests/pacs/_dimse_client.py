# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Read an SR back from a PACS over DIMSE: C-FIND its series and instance, C-GET it (pynetdicom)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

__all__ = ["find_and_get_sr"]


def _find(assoc, query: Dataset) -> list[Dataset]:
    found = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        assert status is not None, "C-FIND got no response"
        if status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found.append(identifier)
    return found


def find_and_get_sr(host: str, port: int, called_ae: str, study_uid: str) -> list[Dataset]:
    """Every SR instance of a study, found with C-FIND (series then image level) and retrieved with C-GET."""
    ae = AE(ae_title="LLAVATEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(ComprehensiveSRStorage)
    received: list[Dataset] = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    assoc = ae.associate(host, port, ae_title=called_ae, ext_neg=[build_role(ComprehensiveSRStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established, "no association with the PACS"
    try:
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.Modality = "SERIES", study_uid, "SR"
        query.SeriesInstanceUID = ""
        series = [s.SeriesInstanceUID for s in _find(assoc, query) if s.get("Modality") == "SR"]
        for series_uid in series:
            query = Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID = "IMAGE", study_uid
            query.SeriesInstanceUID, query.SOPInstanceUID = series_uid, ""
            for image in _find(assoc, query):
                get = Dataset()
                get.QueryRetrieveLevel, get.StudyInstanceUID = "IMAGE", study_uid
                get.SeriesInstanceUID, get.SOPInstanceUID = series_uid, image.SOPInstanceUID
                statuses = [s.Status for s, _ in assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet) if s]
                assert statuses and statuses[-1] == 0x0000, f"C-GET ended with {statuses}"
    finally:
        assoc.release()
    return received
