"""One Settings object for the whole product.

Values come from (highest first): keyword arguments, environment variables with the
``TRIAGE_`` prefix, the TOML file named by ``TRIAGE_CONFIG``, then the defaults here.
``load_settings()`` turns every validation problem into one ``ConfigError`` whose
message names the setting and what to do about it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from triage.errors import ConfigError

#: DICOM default character repertoire for AE titles: printable ASCII except backslash.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_SECRET_KEYS = ("password", "secret", "token")
CONFIG_VARIABLE = "TRIAGE_CONFIG"
#: ``TRIAGE_*`` variables that are not settings: the config file's name, and the reference
#: fixtures the tests and benchmarks read
NON_SETTING_VARIABLES = frozenset({CONFIG_VARIABLE, "TRIAGE_FIXTURES"})
SOURCE_DEFAULT, SOURCE_ENVIRONMENT = "default", "environment"
SOURCE_CONFIG_FILE, SOURCE_ARGUMENT = "config file", "argument"


def validate_ae_title(value: str, setting: str) -> str:
    """Return the AE title stripped of padding, or raise ValueError naming the setting."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value) or len(value) > 16:
        raise ValueError(
            f"{setting}={value!r} is not a valid AE title: use 1-16 characters, printable "
            "ASCII without backslash, not only spaces (e.g. TRIAGE)"
        )
    return stripped


class GroupBy(StrEnum):
    STUDY_UID = "study_uid"
    ACCESSION = "accession"


class PartialPolicy(StrEnum):
    NOT_TRIAGED = "not_triaged"
    PARTIAL = "partial"


class Destination(BaseModel):
    """A C-STORE destination, written ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"\s*([^@]+)@([^:@\s]+):(\d+)\s*", text)
        if not match:
            raise ValueError(f"archive destination {text!r} must look like AET@host:port")
        ae, host, port = match.groups()
        port_n = int(port)
        if not 1 <= port_n <= 65535:
            raise ValueError(f"archive destination {text!r}: port must be 1-65535")
        return cls(ae_title=validate_ae_title(ae, "archive AE title"), host=host, port=port_n)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class EnsembleMember(BaseModel):
    """One model of the ensemble: a registry name, its weight and the image class it scores."""

    name: str
    weight: float = Field(gt=0)
    #: the image class group it scores: ffdm (also synthetic 2D) or dbt; by default the
    #: model's own (a value that contradicts the model stops start-up)
    modality: Literal["ffdm", "dbt"] | None = None


class PriorityLevel(BaseModel):
    """A worklist category: exams whose score is >= ``min_score`` (highest first wins)."""

    name: str
    min_score: float = Field(ge=0, le=1)


def _default_ensemble() -> list[EnsembleMember]:
    return [EnsembleMember(name=f"gmic-resnet18-{i}", weight=0.2) for i in range(1, 6)]


#: Image classes whose probabilities are combined per breast (the scorable image classes of
#: ``triage.vocabulary.ImageClass``; config imports nothing from the project, a test checks
#: that the two agree).
CLASS_WEIGHT_CLASSES = ("ffdm", "synthetic2d", "dbt")


def _default_class_weights() -> dict[str, float]:
    return dict.fromkeys(CLASS_WEIGHT_CLASSES, 1.0)


def _default_priorities() -> list[PriorityLevel]:
    return [
        PriorityLevel(name="HIGH", min_score=0.5),
        PriorityLevel(name="MEDIUM", min_score=0.2),
        PriorityLevel(name="ROUTINE", min_score=0.0),
    ]


class Settings(BaseSettings):
    """Everything configurable. Read once at start-up with ``load_settings()``."""

    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_", extra="forbid", validate_default=True, frozen=True
    )

    # storage
    data_dir: Path = Path("triage-data")
    database_url: str = ""  # empty: SQLite file under data_dir
    broker_url: str = ""  # empty: embedded in-process worker
    broker_visibility_timeout: float = Field(default=7200.0, gt=0)  # > 2x the longest task
    requeue_after_seconds: float = Field(default=120.0, gt=0)  # reconciler: stuck in queued

    # DICOM listener
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    ae_title: str = "TRIAGE"
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_pdu_size: int = 0  # 0 = the listener advertises 1 MiB (never "unlimited": memory)

    # exam assembly
    quiet_seconds: float = 30.0
    max_wait_seconds: float = 600.0
    max_study_age_hours: float = 0.0  # 0 = no age limit
    screening_procedures: Annotated[list[str], NoDecode] = Field(default_factory=list)  # fnmatch
    group_by: GroupBy = GroupBy.STUDY_UID
    group_window_hours: float = 12.0

    # scoring
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ensemble: list[EnsembleMember] = Field(default_factory=_default_ensemble)
    #: Relative weight of each image class when a breast's probabilities are combined across
    #: classes, e.g. ``{"ffdm": 1, "synthetic2d": 1, "dbt": 1}``; per breast renormalised
    #: over the classes that breast has, so an exam with one class is scored on it alone.
    #: Default, equal weights: Park et al. (3D-GMIC), section V-B and Table II, average the
    #: predictions of the models of each modality (FFDM, synthetic 2D, DBT) into a
    #: "multi-modal ensemble", whose breast-wise malignant AUC with all three modalities
    #: (0.841) is their best. 0 leaves a class out of the breast and exam scores (its views
    #: are still scored and reported). Every class must be named.
    class_weights: dict[str, float] = Field(default_factory=_default_class_weights)
    priorities: list[PriorityLevel] = Field(default_factory=_default_priorities)
    tta_samples: int = Field(default=0, ge=0)
    tta_seed: int = 0
    #: what an exam that lacks coverage (a breast or standard view missing, a view that failed
    #: to decode, a member that failed) is categorised as: ``not_triaged`` (default; the reason
    #: says what is missing) or ``partial`` (category PARTIAL). Never HIGH/MEDIUM/ROUTINE.
    partial_policy: PartialPolicy = PartialPolicy.NOT_TRIAGED
    allow_uncalibrated: bool = False
    testing: bool = False

    # outputs and delivery
    archive: str = ""  # AET@host:port[,AET@host:port]
    archive_sr: str = ""  # overrides archive for SRs when set
    archive_overlay: str = ""  # overrides archive for overlays when set
    #: shadow mode (default): results of runs whose weights are not all verified stay in the
    #: local outputs folder and the DB; they go to the configured archive only when this is
    #: set (demo and tests set it). Never set it on a clinical archive.
    send_unverified: bool = False
    send_unverified_cad: bool = False
    cad_certainty_threshold: float = Field(default=0.5, ge=0, le=1)
    overlay_modality: str = "OT"
    overlay_series_description: str = "AI saliency overlay - not for diagnosis"
    overlay_max_rows: int = 0  # 0 = full size
    uid_root: str = "1.2.826.0.1.3680043.8.498.99."
    institution_name: str = ""

    # faces
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: patient IDs appear in API responses (and may be searched) only for admin tokens and
    #: only when this is set; patient names are never stored nor shown
    api_show_patient_ids: bool = False
    log_level: str = "INFO"
    log_json: bool = True
    #: also write JSON lines here (rotated); `triage logs --study UID` reads it
    log_file: Path | None = None
    log_file_max_mb: float = Field(default=50.0, gt=0)
    log_file_backups: int = Field(default=5, ge=0)
    #: GET /readyz fails when the spool's filesystem has less free space than this
    min_free_spool_mb: float = Field(default=1024.0, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_file_path()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # ---- validators -------------------------------------------------------
    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return validate_ae_title(v, "TRIAGE_AE_TITLE")

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in (s.strip() for s in v.split(",")) if p]
        return v

    @field_validator("screening_procedures", mode="before")
    @classmethod
    def _split_patterns(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in (s.strip() for s in v.split(",")) if p]
        return v

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        return [validate_ae_title(a, "TRIAGE_ALLOWED_CALLING_AETS") for a in v]

    @field_validator("log_file", mode="before")
    @classmethod
    def _no_log_file(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"TRIAGE_LOG_LEVEL {v!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v.upper()

    @field_validator("dicom_port", "api_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError(f"port {v} is outside 0-65535 (0 = pick a free port)")
        return v

    @field_validator("quiet_seconds", "max_wait_seconds", "max_study_age_hours")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be zero or positive (seconds/hours)")
        return v

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme.split("+")[0] not in ("sqlite", "postgresql"):
            raise ValueError(
                f"TRIAGE_DATABASE_URL {v!r}: use sqlite:///PATH or "
                "postgresql+psycopg://user:password@host:port/dbname"
            )
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("redis", "rediss", "memory", "sqla+sqlite"):
            raise ValueError(
                f"TRIAGE_BROKER_URL {v!r}: use redis://host:port/db, or leave empty for the "
                "embedded in-process worker"
            )
        return v

    @field_validator("archive", "archive_sr", "archive_overlay")
    @classmethod
    def _archive(cls, v: str) -> str:
        for part in filter(None, (p.strip() for p in v.split(","))):
            Destination.parse(part)
        return v

    @field_validator("class_weights")
    @classmethod
    def _class_weights(cls, v: dict[str, float]) -> dict[str, float]:
        known = ", ".join(CLASS_WEIGHT_CLASSES)
        unknown = sorted(set(v) - set(CLASS_WEIGHT_CLASSES))
        if unknown:
            raise ValueError(f"unknown image class(es) {', '.join(unknown)}; the classes are "
                             f"{known}")
        missing = [c for c in CLASS_WEIGHT_CLASSES if c not in v]
        if missing:
            raise ValueError(f"no weight for {', '.join(missing)}: give every class a weight "
                             f"({known}; 0 leaves a class out of the score)")
        bad = {c: w for c, w in v.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"weights must be zero or positive numbers, got {bad}")
        if not any(v.values()):
            raise ValueError("every class weight is 0: no exam could be scored; give at least "
                             "one class a positive weight (default: 1 each)")
        return {c: float(v[c]) for c in CLASS_WEIGHT_CLASSES}

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"TRIAGE_DEVICE {v!r}: use auto, cpu, cuda or cuda:N")
        return v

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, v: str) -> str:
        if not re.fullmatch(r"([1-9]\d*|0)(\.([1-9]\d*|0))*\.", v) or len(v) > 40:
            raise ValueError(
                f"TRIAGE_UID_ROOT {v!r}: a dotted numeric UID prefix ending with '.', "
                "at most 40 characters"
            )
        return v

    @model_validator(mode="after")
    def _ensemble_and_priorities(self) -> Settings:
        if not self.ensemble:
            raise ValueError("TRIAGE_ENSEMBLE is empty: configure at least one member")
        total = sum(m.weight for m in self.ensemble)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"TRIAGE_ENSEMBLE weights sum to {total:.6f}; they must sum to 1")
        names = [m.name for m in self.ensemble]
        if len(set(names)) != len(names):
            raise ValueError("TRIAGE_ENSEMBLE lists a member twice")
        if not self.priorities:
            raise ValueError("TRIAGE_PRIORITIES is empty: configure at least one level")
        cutoffs = [p.min_score for p in self.priorities]
        if cutoffs != sorted(cutoffs, reverse=True) or cutoffs[-1] != 0.0:
            raise ValueError(
                "TRIAGE_PRIORITIES must be ordered from the highest min_score down and the "
                "last level must have min_score 0"
            )
        return self

    # ---- derived ------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'triage.db').resolve()}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    def destinations(self, kind: str = "") -> list[Destination]:
        """Destinations for an output kind ("sr" or "overlay"), falling back to ``archive``."""
        text = {"sr": self.archive_sr, "overlay": self.archive_overlay}.get(kind, "") or self.archive
        return [Destination.parse(p) for p in text.split(",") if p.strip()]

    def prepare_directories(self) -> None:
        """Create the data directories and check they are writable (start-up check)."""
        for path in (self.data_dir, self.spool_dir, self.quarantine_dir, self.models_dir,
                     self.outputs_dir):
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe = path / ".write-test"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(
                    f"TRIAGE_DATA_DIR: {path} is not writable ({exc.strerror}); set "
                    "TRIAGE_DATA_DIR to a directory this user can write"
                ) from exc

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain data with passwords in URLs and secrets masked."""
        data = self.model_dump(mode="json")
        data["resolved_database_url"] = self.resolved_database_url
        for key, value in list(data.items()):
            if isinstance(value, str) and "://" in value:
                parts = urlsplit(value)
                if parts.password:
                    data[key] = value.replace(f":{parts.password}@", ":***@")
            if any(s in key for s in _SECRET_KEYS) and value:
                data[key] = "***"
        return data


def config_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The TOML file named by ``TRIAGE_CONFIG``; a name that is no file stops start-up."""
    name = (os.environ if environ is None else environ).get(CONFIG_VARIABLE, "").strip()
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{CONFIG_VARIABLE} names {path}, which {what}: create it, correct "
                          f"the path, or unset {CONFIG_VARIABLE} to use the environment and the "
                          "defaults only")
    return path


def setting_variables() -> dict[str, str]:
    """Environment variable -> field name, for every setting."""
    return {f"TRIAGE_{name.upper()}": name for name in Settings.model_fields}


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """``TRIAGE_*`` variables that name no setting (typos), each with its close matches."""
    environ = os.environ if environ is None else environ
    known = [*setting_variables(), *NON_SETTING_VARIABLES]
    suffixes = {name.removeprefix("TRIAGE_"): name for name in known}
    return {name: [suffixes[s] for s in difflib.get_close_matches(
                name.upper().removeprefix("TRIAGE_"), suffixes, n=3, cutoff=0.8)]
            for name in sorted(environ)
            if name.upper().startswith("TRIAGE_") and name.upper() not in known}


def setting_sources(settings: Settings,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each value came from: ``environment``, ``config file``, ``argument`` or
    ``default`` (the order in which they win)."""
    environ = os.environ if environ is None else environ
    from_env = {name.upper() for name in environ}
    path = config_file_path(environ)
    in_file: set[str] = set()
    if path is not None:
        with path.open("rb") as handle:
            in_file = set(tomllib.load(handle))
    sources = {}
    for env_name, field in setting_variables().items():
        if field not in settings.model_fields_set:
            sources[field] = SOURCE_DEFAULT
        elif env_name in from_env:
            sources[field] = SOURCE_ENVIRONMENT
        elif field in in_file:
            sources[field] = SOURCE_CONFIG_FILE
        else:
            sources[field] = SOURCE_ARGUMENT
    return sources


def load_settings(**overrides: Any) -> Settings:
    """Build and validate Settings; every problem becomes one admin-readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"TRIAGE_{loc.split('.')[0].upper()}" if loc != "settings" else "settings"
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:  # a key of the file
                key = str(err["loc"][0])
                close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
                msg = (f"unknown key {key!r} in {os.environ.get(CONFIG_VARIABLE, '')}"
                       + (f" (did you mean {close[0]!r}?)" if close else ""))
                env = CONFIG_VARIABLE
            lines.append(f"{env}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
    except (OSError, ValueError) as exc:  # e.g. unreadable TOML file
        raise ConfigError(f"cannot read the configuration file {CONFIG_VARIABLE}="
                          f"{os.environ.get(CONFIG_VARIABLE, '')}: {exc}") from exc
