"""PACS-side worklist triage for screening mammography."""

__version__ = "0.1.0"
