# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DIMSE for the PACS node (pynetdicom): a C-STORE SCP that receives studies, a C-STORE SCU that sends the SR back.

pynetdicom logs association details (AE titles, and at DEBUG whole datasets): its logger is held at WARNING.

Every association's socket is tuned when it opens (:func:`tune_socket`): Linux delays an acknowledgement up to 40 ms,
and a sender with Nagle's algorithm on (DCMTK, hence Orthanc, unless ``TCP_NODELAY=1`` is in its environment) holds
the second write of each PDU until the first is acknowledged, which cost 40 ms per received instance (12 instances:
0.5 s against Orthanc 1.10, 0.03 s with the socket tuned; ``benchmarks/bench_pacs.py``).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from os import PathLike
from typing import Any

import pydicom
from monai.utils import optional_import

from ...errors import PacsConfigError, PacsError, PacsUnavailableError

pynetdicom, _HAS_PYNETDICOM = optional_import("pynetdicom")

__all__ = ["DimseDestination", "parse_dimse_address", "start_store_scp", "tune_socket"]

_ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
# C-STORE statuses that a later attempt may turn into a success (out of resources, busy)
_TRANSIENT_STATUS = {0xA700, 0xA701, 0xA702, 0xA7FF}


def _require() -> None:
    if not _HAS_PYNETDICOM:
        raise ImportError("the PACS node needs pynetdicom (pip install 'monai-llava-med[pacs]')")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def tune_socket(event: Any) -> None:
    """pynetdicom ``EVT_CONN_OPEN`` handler: send without delay and acknowledge every read at once.

    Sets ``TCP_NODELAY`` (our own small writes go out at once) and re-arms ``TCP_QUICKACK`` after each read of the
    association's socket (the kernel clears it by itself), so a peer that waits for an acknowledgement before its
    next write is not held for the delayed-ACK timer. Platforms without these options are left as they are.

    Args:
        event: the connection-open event (its ``assoc.dul.socket`` is pynetdicom's ``AssociationSocket``).
    """
    assoc_socket = event.assoc.dul.socket
    raw = getattr(assoc_socket, "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is None:
        return
    read = assoc_socket.recv

    def recv(nr_bytes: int) -> bytearray:
        data = read(nr_bytes)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
        except OSError:  # the peer closed the connection: the next read reports it
            pass
        return data

    assoc_socket.recv = recv


def parse_dimse_address(spec: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> ``(ae_title, host, port)``.

    Args:
        spec: the address.

    Raises:
        PacsConfigError: not of that form, or a port outside 1-65535.
    """
    match = _ADDRESS.match(spec.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise PacsConfigError("a DIMSE address must read AE@host:port (AE title <= 16 characters)", "destination")
    return match["ae"], match["host"], int(match["port"])


class DimseDestination:
    """A DICOM node the SR is sent to with C-STORE.

    Args:
        ae_title: its AE title.
        host: its host.
        port: its port.
        calling_ae: our AE title.
        timeout_s: association and network timeout.
    """

    def __init__(self, ae_title: str, host: str, port: int, calling_ae: str = "LLAVAMED",
                 timeout_s: float = 30.0) -> None:
        _require()
        self.ae_title, self.host, self.port, self.calling_ae = ae_title, host, port, calling_ae
        self.timeout_s = timeout_s

    def describe(self) -> str:
        """The node, for logs and errors."""
        return f"DIMSE {self.ae_title}@{self.host}:{self.port}"

    def store(self, path: str | PathLike) -> None:
        """Send one DICOM file with C-STORE; raises unless the peer answers Success (or a warning).

        Args:
            path: the file (the SR).

        Raises:
            PacsUnavailableError: no association (refused, unreachable, aborted) or a transient failure status.
            PacsError: the peer refused the instance.
        """
        ds = pydicom.dcmread(path)
        ae = pynetdicom.AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title,
                             evt_handlers=[(pynetdicom.evt.EVT_CONN_OPEN, tune_socket)])
        if not assoc.is_established:
            raise PacsUnavailableError("no association (refused, rejected or unreachable)", self.describe())
        try:
            status = assoc.send_c_store(ds)
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code == -1:
            raise PacsUnavailableError("C-STORE got no response (association aborted or timed out)", self.describe())
        if code in _TRANSIENT_STATUS:
            raise PacsUnavailableError(f"C-STORE failed with status 0x{code:04X}", self.describe())
        if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
            raise PacsError(f"C-STORE refused with status 0x{code:04X}", self.describe())


def start_store_scp(ae_title: str, host: str, port: int, on_store: Callable[[Any], int],
                    max_pdu: int = 0) -> Any:
    """Start a C-STORE SCP (every storage SOP class, and Verification for C-ECHO) in background threads.

    Args:
        ae_title: our AE title.
        host: the interface to bind (``127.0.0.1``: this machine only).
        port: the port.
        on_store: ``handler(event) -> status`` for each C-STORE request (pynetdicom's ``EVT_C_STORE``).
        max_pdu: largest PDU accepted (0: unlimited).

    Returns:
        the ``ThreadedAssociationServer`` (stop it with ``shutdown()``).
    """
    _require()
    ae = pynetdicom.AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.supported_contexts = pynetdicom.AllStoragePresentationContexts
    ae.add_supported_context(pynetdicom.sop_class.Verification)
    try:
        return ae.start_server((host, port), block=False,
                               evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store),
                                             (pynetdicom.evt.EVT_CONN_OPEN, tune_socket)])
    except OSError as err:
        raise PacsConfigError(f"cannot listen on {host}:{port} ({err.strerror or type(err).__name__})",
                              "listener") from None

