"""One error hierarchy. Messages say what happened and what an admin can do."""

from __future__ import annotations


class TriageError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(TriageError):
    """Settings are invalid; the message names the setting and the fix."""


class DatabaseError(TriageError):
    """The database cannot be reached or rejected a write."""


class InvalidTransition(TriageError):
    """An exam status change that DESIGN.md does not allow."""


class UnknownStudy(TriageError):
    """No exam with that identifier is known."""


class StorageError(TriageError):
    """Bytes could not be kept on disk (disk full, permissions)."""


class InvalidDicom(TriageError):
    """A received object cannot be parsed or lacks what a storage object must have."""


class DecodeError(TriageError):
    """Pixel data of an instance cannot be decoded; names the instance."""


class PreprocessingError(TriageError):
    """A mammogram cannot be cropped/windowed (e.g. no breast found)."""


class ModelError(TriageError):
    """A model cannot be built, or its weights cannot be loaded."""


class WeightsError(ModelError):
    """A weights file is missing, has the wrong checksum, keys or shapes, or is not allowed."""


class ScoringError(TriageError):
    """An exam could not be scored."""


class TransientError(TriageError):
    """A failure that may succeed on retry (broker, database or archive briefly down)."""


class DeliveryError(TriageError):
    """An object could not be delivered to a destination."""


class NothingToScore(ScoringError):
    """The exam has no image that any configured member scores: it is skipped, not failed."""
