"""DICOM ingest and delivery: listener (SCP), spool, classification, exam assembly, sender (SCU).

Kept import-free on purpose: ``import triage.dicom`` must stay cheap; import the submodule
you need (``triage.dicom.classify``, ``triage.dicom.assembly``, ...).
"""
