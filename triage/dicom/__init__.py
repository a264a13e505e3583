"""The network and files: listener (SCP), spool, quarantine checks, classification, sender (SCU).

The exam lifecycle lives in ``triage.exams``; the listener is bound to it by the service.

Kept import-free on purpose: ``import triage.dicom`` must stay cheap; import the submodule
you need (``triage.dicom.classify``, ``triage.dicom.listener``, ...).
"""
