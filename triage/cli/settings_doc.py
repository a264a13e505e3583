"""The settings reference (``docs/settings.md``), generated from the ``Settings`` fields.

Names, types and defaults come from the fields themselves; the format and meaning of each
come from :data:`DOCS`. ``triage config docs`` prints the page; a test checks that every
field has an entry here and that ``docs/settings.md`` is the page this module generates
(regenerate it with ``triage config docs > docs/settings.md``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from triage.config import NON_SETTING_VARIABLES, Settings

#: field -> (format, meaning). Keep in the order of the fields in triage/config.py.
DOCS: dict[str, tuple[str, str]] = {
    "data_dir": ("path", "spool, quarantine, models, outputs and the default SQLite file "
                 "(`triage.db`); shared by every process and worker host"),
    "database_url": ("SQLAlchemy URL: `sqlite:///PATH` or "
                     "`postgresql+psycopg://user:password@host:5432/db`",
                     "empty: SQLite file `triage.db` under the data dir (WAL mode)"),
    "broker_url": ("`redis://host:6379/0` (or `rediss://`)",
                   "Celery broker for `triage worker`; empty: the embedded in-process worker"),
    "broker_visibility_timeout": ("seconds (> 0)", "broker redelivery of an unacknowledged "
                                  "task; keep it above twice the longest scoring"),
    "requeue_after_seconds": ("seconds (> 0)", "the reconciler enqueues again an exam "
                              "`queued` for longer than this"),
    "dicom_host": ("host or IP address", "address the DICOM listener binds (`0.0.0.0`: all)"),
    "dicom_port": ("port 0-65535", "DICOM listener port (0: a free port)"),
    "ae_title": ("AE title: 1-16 printable ASCII characters, no backslash",
                 "the listener's AE title, and the calling AE of everything the product sends "
                 "(results to the archive, the C-ECHO of `GET /readyz`)"),
    "allowed_calling_aets": ("comma-separated AE titles (TOML: list)",
                             "only these calling AEs may associate; empty: any. Add "
                             "`TRIAGE_DEMO` for `triage demo` and `triage serve --demo`"),
    "max_pdu_size": ("bytes (0: default)", "maximum PDU the listener advertises; 0: 1 MiB "
                     "(never unlimited)"),
    "quiet_seconds": ("seconds (>= 0)", "an exam is ready this long after its last image "
                      "(and once no association that sent it is open)"),
    "max_wait_seconds": ("seconds (>= 0)", "an incomplete exam is decided this long after "
                         "its first image"),
    "max_study_age_hours": ("hours (>= 0; 0: no limit)",
                            "older studies are stored and skipped with that reason (priors)"),
    "screening_procedures": ("comma-separated fnmatch patterns (TOML: list)",
                             "only studies whose procedure codes or description match are "
                             "scored; empty: all"),
    "group_by": ("`study_uid` or `accession`", "what makes one exam: the Study Instance UID, "
                 "or accession number + issuer within the window below"),
    "group_window_hours": ("hours", "window for `group_by = accession`"),
    "device": ("`auto`, `cpu`, `cuda` or `cuda:N`", "where the models run (`auto`: the GPU "
               "when there is one)"),
    "ensemble": ("JSON list / TOML `[[ensemble]]` of `{name, weight[, modality]}`; weights sum "
                 "to 1", "the members that score each exam (registry names)"),
    "class_weights": ("JSON object / TOML table `{ffdm, synthetic2d, dbt}` of numbers >= 0",
                      "per-breast weight of each image class (0 leaves a class out)"),
    "priorities": ("JSON list / TOML `[[priorities]]` of `{name, min_score}`, highest first, "
                   "the last 0", "worklist categories by exam score"),
    "tta_samples": ("integer >= 0", "test-time augmentation: seeded windows per 2D view, "
                    "averaged (0: off)"),
    "tta_seed": ("integer", "seed of the test-time augmentation windows"),
    "partial_policy": ("`not_triaged` or `partial`", "category of a verified run that lacks "
                       "coverage: NOT TRIAGED or PARTIAL (never a priority)"),
    "allow_uncalibrated": ("boolean", "allow members whose weights are not verified published "
                           "weights (their results are NOT TRIAGED)"),
    "testing": ("boolean", "allows the reduced-resolution test members; never in a clinical "
                "configuration"),
    "archive": ("`AET@host:port[,AET@host:port...]`", "where results are sent; empty: the "
                "local `outputs/` folder"),
    "archive_sr": ("`AET@host:port[,...]`", "destinations for SRs (empty: `archive`)"),
    "archive_overlay": ("`AET@host:port[,...]`", "destinations for overlays (empty: "
                        "`archive`)"),
    "send_unverified": ("boolean", "send results of unverified runs to the archive (testing "
                        "and demo only); off: shadow mode"),
    "send_unverified_cad": ("boolean", "also send the Mammography CAD SR of unverified runs "
                            "(testing only)"),
    "cad_certainty_threshold": ("number 0-1", "malignant probability at which the CAD SR "
                                "reports a finding"),
    "overlay_modality": ("DICOM Modality code", "Modality of the overlay images"),
    "overlay_series_description": ("text", "Series Description of the overlay images"),
    "overlay_max_rows": ("pixels (0: full size)", "overlays are downscaled to at most this "
                         "many rows"),
    "uid_root": ("dotted numeric UID prefix ending with `.`, at most 40 characters",
                 "root of the UIDs of the objects the product makes"),
    "institution_name": ("text", "Institution Name in the Contributing Equipment of our "
                         "outputs"),
    "api_host": ("host or IP address", "address the HTTP API binds (loopback by default)"),
    "api_port": ("port 0-65535", "HTTP API port"),
    "api_show_patient_ids": ("boolean", "patient IDs appear in API responses (and may be "
                             "searched) for admin tokens only when set; patient names never"),
    "log_level": ("`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`", "log threshold"),
    "log_json": ("boolean", "stderr log as JSON lines (off: plain text with the extra fields)"),
    "log_file": ("path (empty: none)", "also write the log here as JSON lines, rotated; "
                 "`triage logs --study UID` reads it. Give each process its own file"),
    "log_file_max_mb": ("MiB (> 0)", "size at which the log file is rotated"),
    "log_file_backups": ("integer >= 0", "rotated log files kept (`FILE.1` is the newest)"),
    "min_free_spool_mb": ("MiB (>= 0)", "`GET /readyz` reports not ready when the spool's "
                          "filesystem has less free space than this"),
}

#: ``TRIAGE_*`` variables that are no settings, and fixed values an operator configures for
NOT_SETTINGS: dict[str, str] = {
    "TRIAGE_CONFIG": "path of the TOML file with settings (its keys are the field names "
                     "below in lower case); a name that is no file stops start-up",
    "TRIAGE_FIXTURES": "tests and benchmarks only: the reference fixtures folder "
                       "(default `../shared/fixtures`)",
}


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_none=True) for v in value]
    if isinstance(value, Enum):
        value = value.value
    if value is None or value == "" or value == []:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def settings_markdown() -> str:
    """The page ``docs/settings.md``."""
    missing = [n for n in Settings.model_fields if n not in DOCS]
    if missing:
        raise KeyError(f"settings without documentation in triage/cli/settings_doc.py: "
                       f"{', '.join(missing)}")
    lines = [
        "# Settings",
        "",
        "<!-- generated by `triage config docs > docs/settings.md` from triage/config.py and "
        "triage/cli/settings_doc.py; do not edit by hand -->",
        "",
        "Every setting is an environment variable `TRIAGE_<NAME>` or a key `<name>` in the TOML "
        "file named by `TRIAGE_CONFIG`. The environment wins over the file, the file over the "
        "default. `triage config show` prints the effective values (secrets masked), where "
        "each came from (`sources`: default / environment / config file) and any `TRIAGE_*` "
        "variable that is no setting (`unknown`: a typo; every command warns about it at "
        "start-up, naming the close matches). An invalid value, an unknown key in the file, or "
        "a `TRIAGE_CONFIG` that names no file stops start-up with a message naming it.",
        "",
        "Booleans: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`. Lists and tables in the "
        "environment are JSON unless the format says comma-separated.",
        "",
        "| variable | format | default | meaning |",
        "|---|---|---|---|",
    ]
    for name in Settings.model_fields:
        fmt, meaning = DOCS[name]
        lines.append(f"| `TRIAGE_{name.upper()}` | {fmt} | {_default(name)} | {meaning} |")
    lines += [
        "",
        "## Variables that are not settings",
        "",
        "| variable | meaning |",
        "|---|---|",
    ]
    for variable in sorted(NON_SETTING_VARIABLES):
        lines.append(f"| `{variable}` | {NOT_SETTINGS[variable]} |")
    lines += [
        "",
        "## Fixed AE titles",
        "",
        "* `triage demo` and `triage serve --demo` send the demo exam (and their C-ECHO) with "
        "the calling AE title **`TRIAGE_DEMO`**, to the listener's `TRIAGE_AE_TITLE`. With "
        "`TRIAGE_ALLOWED_CALLING_AETS` set, add `TRIAGE_DEMO` to it for the demo.",
        "* Results sent to the archive and the C-ECHO of `GET /readyz` use `TRIAGE_AE_TITLE` as "
        "the calling AE title: the archive must know it.",
        "",
    ]
    return "\n".join(lines)
