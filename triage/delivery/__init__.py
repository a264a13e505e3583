"""Everything that leaves us: outputs built and written (``build``), outbox rows and the
`delivered` mark (``outbox``), the output stage the pipeline calls (``publisher``) and the
one-at-a-time sender (``sender``)."""

from triage.delivery.build import WrittenObject, build_outputs, write_outputs
from triage.delivery.outbox import LOCAL_DESTINATION, destinations, mark_delivered, record_outbox
from triage.delivery.publisher import Publisher
from triage.delivery.sender import OutboxSender, backoff_seconds, send_pending

__all__ = ["LOCAL_DESTINATION", "OutboxSender", "Publisher", "WrittenObject", "backoff_seconds",
           "build_outputs", "destinations", "mark_delivered", "record_outbox", "send_pending",
           "write_outputs"]
