"""C-ECHO as a client: is a DICOM peer (our own listener included) answering?"""

from __future__ import annotations

import logging

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.config import Destination

log = logging.getLogger(__name__)


def echo(destination: Destination, calling_ae: str, timeout: float = 5.0) -> bool:
    """True when ``destination`` accepts an association and answers C-ECHO with success."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0x0000
    finally:
        assoc.release()
