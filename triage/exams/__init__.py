"""The exam lifecycle: grouping instances into exams (``grouping``), the header fields kept
(``headers``), patient identity checks (``identity``), held exams and their release
(``hold``), the chosen image set (``chosen``), re-open rules (``reopen``), recording one
stored instance (``recording``) and readiness (``readiness``).

It knows the database and DICOM headers, never torch or the network: the service binds the
listener's store handler to :func:`record_instance` and its timer to
:func:`evaluate_readiness`.
"""

from triage.exams.headers import StudyHeader, acquisition_datetime, procedure_codes
from triage.exams.readiness import evaluate_readiness
from triage.exams.recording import record_instance

__all__ = [
    "StudyHeader",
    "acquisition_datetime",
    "evaluate_readiness",
    "procedure_codes",
    "record_instance",
]
