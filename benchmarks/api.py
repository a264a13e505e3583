"""API latency: worklist and score history with 100,000 runs in PostgreSQL, against a plain
``SELECT`` of the same rows timed the same way in the same run.

    .venv/bin/python benchmarks/api.py [--runs 100000] [--repeats 50] [--json PATH] [--explain]

Starts a throw-away PostgreSQL the way the integration tests do (``tests.servers``: initdb as
the ``postgres`` user in a temp dir, 127.0.0.1 only, fsync off, stopped by PID), migrates it
with the product's migrations, then loads a seeded year of a site: ``--studies`` exams
(default 4/5 of ``--runs``) arriving evenly over 365 days up to now, ~96 % delivered, some
skipped, failed and held, the last two hours still in flight; one run per scored exam plus
re-scores (a re-opened exam or a later model set) up to ``--runs`` runs, each with its exam
score and the ensemble's and each of ``--members`` members' per-breast scores (13 rows a
run; ``--view-scores`` adds the members' per-view scores, 33 rows a run as
``triage.db.runs.store_result`` writes them, at 2-3x the load time); categories from the
default priorities, a few unverified (NOT TRIAGED) and partial runs. Then VACUUM ANALYZE.
SQLAlchemy Core executemany in chunks; about a minute for 100,000 runs on 2 cores.

The API runs as the product runs it (``ApiServer``: uvicorn on 127.0.0.1, port 0, in a
thread of this process, JSON log lines at INFO to a file as ``triage api`` writes them) and
is asked with httpx over one keep-alive connection with an admin token:

    worklist first page     GET /api/v1/worklist?limit=50
    worklist cursor page    ... &cursor=<next_cursor of the first page>
    history date range      GET /api/v1/scores/history?limit=100&since=<-120 d>&until=<-90 d>
    history category        GET /api/v1/scores/history?limit=100&category=HIGH
    history cursor page     the date-range request with its next_cursor

The baseline of each is one hand-written SQL ``SELECT`` of the same rows and columns (the
same WHERE, ORDER BY and LIMIT; the exam's latest run by a LATERAL join, the ensemble's
breast scores by two LEFT JOINs) executed with psycopg on its own autocommit connection and
fetched, with JIT off on that connection (at 100,000 runs the LATERAL plan's estimate passes
``jit_above_cost`` and compiling would add ~20 ms to the baseline; the product's statements
stay below it). A request is timed from send to decoded JSON, a query from execute to
fetched rows. ``fn`` is the route's body called in-process (the same query function in a
session, the audit row, ``to_dict``): the API's time without HTTP. Each repetition times
every request the three ways in a rotating order, after ``--warmup`` untimed rounds; the
first round checks that all three return the same exams in the same order. SQL/req counts
the statements the server issued for one request (``before_cursor_execute`` on its engine:
token lookup, queries, query-audit insert). A last line times ``GET /healthz`` (no token,
no SQL): the HTTP stack's floor. ``--explain`` prints EXPLAIN (ANALYZE, BUFFERS) of the
product's statements and of the plain query for each request.

Prints p50 and p95 per request and the ratio API / plain at p95. Goal: <= 2 at p95.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from sqlalchemy import event, insert, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.servers: the PostgreSQL harness the integration tests use

from tests.servers import PostgresServer, tool_path  # noqa: E402
from triage.api.server import ApiServer  # noqa: E402
from triage.config import load_settings  # noqa: E402
from triage.db import Database, Score, ScoringRun, Study, create_database, queries  # noqa: E402
from triage.db.access import Access, Role  # noqa: E402
from triage.db.history import HistoryFilter, score_history  # noqa: E402
from triage.db.migrate import upgrade  # noqa: E402
from triage.db.query_audit import HISTORY_QUERY, record_query  # noqa: E402
from triage.db.tokens import create_token  # noqa: E402
from triage.logs import JsonFormatter, StudyFilter  # noqa: E402

GOAL = 2.0
TOKEN_NAME = "bench-admin"
CHUNK = 20_000  # rows per executemany
#: default priorities (HIGH >= 0.5, MEDIUM >= 0.2, ROUTINE), then PARTIAL, NOT TRIAGED
ORDER = ("HIGH", "MEDIUM", "ROUTINE", "PARTIAL", "NOT TRIAGED")
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
HISTORY_RANGE = (timedelta(days=120), timedelta(days=90))  # since, until: before now

# ---- data ------------------------------------------------------------------------------


def load(url: str, *, runs: int, studies: int, members: int, view_scores: bool, now: datetime,
         seed: int) -> dict[str, int]:
    """Insert a seeded year of exams, runs and scores; returns the row counts."""
    rng = np.random.default_rng(seed)
    year = 365 * 86400.0
    ages = np.sort(rng.uniform(0, year, studies))[::-1]  # seconds before now, oldest first
    arrived = [now - timedelta(seconds=float(a)) for a in ages]
    in_flight = ("receiving", "ready", "queued", "scoring", "scored", "delivered")
    settled = ("delivered", "skipped", "failed", "held")
    statuses = np.where(
        ages < 2 * 3600, rng.choice(in_flight, studies, p=[.15, .05, .1, .1, .2, .4]),
        rng.choice(settled, studies, p=[.963, .03, .005, .002]))
    switch = now - timedelta(days=140)  # the site moved to a new model set then
    study_rows: list[dict[str, Any]] = []
    for i in range(studies):
        sid, status, t0 = i + 1, str(statuses[i]), arrived[i]
        last = t0 + timedelta(seconds=float(rng.uniform(30, 300)))
        uid = f"1.2.826.0.1.3680043.8.498.{seed}.{sid}"
        study_rows.append({
            "id": sid, "grouping_key": uid, "study_instance_uid": uid,
            "accession_numbers": [f"ACC{sid:08d}"], "patient_id": f"PID{rng.integers(10**7):07d}",
            "status": status, "first_received_at": t0, "last_received_at": last,
            "ready_at": last if status != "receiving" else None,
            "scored_at": last + timedelta(seconds=90) if status in ("scored", "delivered") else None,
            "delivered_at": last + timedelta(seconds=100) if status == "delivered" else None,
            "skip_reason": "no scorable image (for processing only)" if status == "skipped" else None,
            "failure_reason": "decode error: truncated pixel data" if status == "failed" else None,
            "hold_reason": "conflicting patient IDs within one exam" if status == "held" else None,
        })

    # first runs: scored/delivered exams and half the held ones succeeded; failed ones failed;
    # exams being scored have a running run
    run_specs: list[tuple[int, datetime, str]] = []  # study id, started, run status
    for s in study_rows:
        status = s["status"]
        start = s["last_received_at"] + timedelta(seconds=20)
        if status in ("scored", "delivered") or (status == "held" and rng.random() < 0.5):
            run_specs.append((s["id"], start, "succeeded"))
        elif status == "failed":
            run_specs.append((s["id"], start, "failed"))
        elif status == "scoring":
            run_specs.append((s["id"], min(start, now), "running"))
    first = len(run_specs)
    if first > runs:
        raise SystemExit(f"--runs {runs} is fewer than the {first} exams that have a run: "
                         "raise --runs or lower --studies")
    scored = [r for r in run_specs if r[2] == "succeeded"]
    for k in rng.integers(0, len(scored), runs - first):  # re-scores, some exams twice
        sid, start, _ = scored[int(k)]
        later = start + timedelta(seconds=float(rng.uniform(600, 30 * 86400)))
        run_specs.append((sid, min(later, now - timedelta(minutes=2)), "succeeded"))

    run_rows: list[dict[str, Any]] = []
    for n, (sid, start, status) in enumerate(run_specs):
        verified = bool(rng.random() > 0.03)
        partial = bool(rng.random() < 0.02)
        exam = float(rng.beta(0.7, 5.0))
        if not verified:
            category, reason = "NOT TRIAGED", "weights of gmic-resnet18-3 are not verified"
        elif partial:
            category, reason = "NOT TRIAGED", "partial exam: no R-MLO"
        else:
            category, reason = ("HIGH" if exam >= 0.5 else "MEDIUM" if exam >= 0.2 else "ROUTINE"), None
        done = status == "succeeded"
        run_rows.append({
            "id": n + 1, "study_id": sid,
            "model_set_version": "ms-2025.11" if start >= switch else "ms-2025.06",
            "instances_digest": f"{n + 1:064x}", "status": status, "verified": verified,
            "exam_score": exam if done else None, "category": category if done else None,
            "not_triaged_reason": reason if done else None, "partial": partial,
            "started_at": start,
            "finished_at": start + timedelta(seconds=float(rng.uniform(20, 90)))
            if status != "running" else None,
            "error": "CUDA out of memory" if status == "failed" else None,
        })

    engine = create_database(url).engine
    scores = 0
    with engine.begin() as conn:
        for table, chunks in ((Study, _chunks(study_rows)), (ScoringRun, _chunks(run_rows)),
                              (Score, score_chunks(run_rows, members, view_scores, rng))):
            for chunk in chunks:
                conn.execute(insert(table), chunk)
                scores += len(chunk) if table is Score else 0
            name = table.__tablename__
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                              f"(SELECT max(id) FROM {name}))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return {"studies": len(study_rows), "runs": len(run_rows), "scores": scores}


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    return (rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK))


def score_chunks(runs: list[dict[str, Any]], members: int, view_scores: bool,
                 rng: np.random.Generator) -> Iterator[list[dict[str, Any]]]:
    """The score rows of the succeeded runs, ``CHUNK`` at a time: exam, the ensemble's and
    each member's per-breast scores, with ``view_scores`` each member's per-view scores."""
    chunk: list[dict[str, Any]] = []
    next_id = 1
    names = [f"gmic-resnet18-{m}" for m in range(1, members + 1)]
    for run in runs:
        if run["status"] != "succeeded":
            continue
        rid, exam = run["id"], run["exam_score"]
        breast = {"L": exam * float(rng.uniform(0.5, 1.0)), "R": exam * float(rng.uniform(0.5, 1.0))}
        breast[("L", "R")[rid % 2]] = exam
        rows = [_score(rid, None, "exam", None, None, exam, None)]
        for side, p in breast.items():
            rows.append(_score(rid, None, "breast", side, None, p, p / 2))
            rows += [_score(rid, m, "breast", side, None, p, p / 2) for m in names]
        if view_scores:
            rows += [_score(rid, m, "view", side, view, breast[side], breast[side] / 2)
                     for m in names for side, view in VIEWS]
        for row in rows:
            row["id"] = next_id
            next_id += 1
        chunk += rows
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _score(run_id: int, member: str | None, level: str, laterality: str | None, view: str | None,
           p_malignant: float, p_benign: float | None) -> dict[str, Any]:
    return {"run_id": run_id, "member": member, "level": level, "laterality": laterality,
            "view": view, "p_malignant": p_malignant, "p_benign": p_benign}


# ---- the plain queries ------------------------------------------------------------------

_RANK = " ".join(
    f"WHEN r.status = 'succeeded' AND s.status IN ('scored', 'delivered') AND r.category = '{c}' "
    f"THEN {i}" for i, c in enumerate(ORDER[:-1]))
WORKLIST_SQL = f"""
SELECT * FROM (
    SELECT s.id, s.study_instance_uid, s.accession_numbers, s.status, s.partial, s.skip_reason,
           s.failure_reason, s.hold_reason, s.first_received_at, s.last_received_at,
           s.scored_at, s.delivered_at, r.status AS run_status, r.category AS run_category,
           r.exam_score, r.not_triaged_reason, r.model_set_version, r.partial AS run_partial,
           CASE {_RANK} ELSE {len(ORDER) - 1} END AS rank
    FROM studies s
    LEFT JOIN LATERAL (SELECT * FROM scoring_runs WHERE study_id = s.id
                       ORDER BY started_at DESC, id DESC LIMIT 1) r ON true
    WHERE s.status NOT IN ('delivered', 'skipped')
       OR CASE WHEN s.status = 'delivered' THEN coalesce(s.delivered_at, s.last_received_at)
               ELSE s.last_received_at END >= now() - interval '24 hours'
) w {{where}}
ORDER BY rank, first_received_at DESC, id DESC
LIMIT %(limit)s
"""


def worklist_sql(*, cursor: bool = False) -> str:
    where = ""
    if cursor:
        where = ("WHERE rank > %(after)s OR (rank = %(after)s AND (first_received_at < %(after_at)s "
                 "OR (first_received_at = %(after_at)s AND id < %(after_id)s)))")
    return WORKLIST_SQL.format(where=where)


HISTORY_SQL = """
SELECT s.study_instance_uid, s.accession_numbers, s.patient_id, r.id, r.model_set_version,
       r.category, r.exam_score, r.finished_at, r.verified, r.partial, r.not_triaged_reason,
       bl.p_malignant AS left_p_malignant, bl.p_benign AS left_p_benign,
       br.p_malignant AS right_p_malignant, br.p_benign AS right_p_benign
FROM scoring_runs r
JOIN studies s ON s.id = r.study_id
LEFT JOIN scores bl ON bl.run_id = r.id AND bl.level = 'breast' AND bl.member IS NULL
                   AND bl.laterality = 'L'
LEFT JOIN scores br ON br.run_id = r.id AND br.level = 'breast' AND br.member IS NULL
                   AND br.laterality = 'R'
WHERE r.status = 'succeeded' AND r.finished_at IS NOT NULL {where}
ORDER BY r.finished_at DESC, r.id DESC
LIMIT %(limit)s
"""


def history_sql(*, dates: bool = False, category: bool = False, cursor: bool = False) -> str:
    where = ""
    if dates:
        where += " AND r.finished_at >= %(since)s AND r.finished_at < %(until)s"
    if category:
        where += " AND r.category = %(category)s"
    if cursor:
        where += " AND (r.finished_at < %(after_at)s OR (r.finished_at = %(after_at)s " \
                 "AND r.id < %(after_id)s))"
    return HISTORY_SQL.format(where=where)


# ---- measuring ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: str
    params: dict[str, Any]
    sql: str
    sql_params: dict[str, Any]
    rows_key: str  # "entries" (worklist) or "rows" (history)
    fn: Callable[[], dict[str, Any]]  # the route's body in-process: query function, to_dict
    api_ms: list[float] = field(default_factory=list)
    plain_ms: list[float] = field(default_factory=list)
    fn_ms: list[float] = field(default_factory=list)
    statements: set[int] = field(default_factory=set)
    rows: int = 0


class StatementCounter:
    """Statements the server's engine sends (this process: uvicorn runs in a thread)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        self.count += 1
        self.last.append((statement, parameters))

    def reset(self) -> None:
        self.count = 0
        self.last = []


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def api_keys(case: Case, body: dict[str, Any]) -> list[str]:
    if case.rows_key == "entries":
        return [e["study_instance_uid"] for e in body["entries"]]
    return [f"{r['study_instance_uid']}@{datetime.fromisoformat(r['scored_at']).isoformat()}"
            for r in body["rows"]]


def plain_keys(case: Case, rows: list[Any]) -> list[str]:
    if case.rows_key == "entries":
        return [r[1] for r in rows]
    return [f"{r[0]}@{r[7].astimezone(UTC).isoformat()}" for r in rows]


def worklist_fn(db: Database, priorities: list[str], **request: Any) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        with db.session() as session:
            page = queries.worklist(session, priorities, queries.WorklistRequest(**request))
        return page.to_dict()
    return run


def history_fn(db: Database, priorities: list[str], access: Access, **flt: Any
               ) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        f = HistoryFilter(**flt)
        with db.session() as session:
            page = score_history(session, f, access, categories=queries.category_order(priorities))
            record_query(session, access, HISTORY_QUERY, f.audit_filters(), rows=len(page.rows))
        return page.to_dict()
    return run


def build_cases(client: httpx.Client, conn: psycopg.Connection[Any], db: Database,
                priorities: list[str], now: datetime) -> list[Case]:
    """The five requests. Each cursor page follows its first page: the API's and the function's
    with the API's next_cursor, the plain query after the last row of its own first page."""
    access = Access.for_role(TOKEN_NAME, Role.ADMIN, show_patient_ids=False)
    wl_first = Case("worklist first page", "/api/v1/worklist", {"limit": 50}, worklist_sql(),
                    {"limit": 50}, "entries", worklist_fn(db, priorities, limit=50))
    since, until = now - HISTORY_RANGE[0], now - HISTORY_RANGE[1]
    dates = {"since": since.isoformat(), "until": until.isoformat()}
    h_dates = Case("history date range", "/api/v1/scores/history", {"limit": 100, **dates},
                   history_sql(dates=True), {"since": since, "until": until, "limit": 100}, "rows",
                   history_fn(db, priorities, access, since=since, until=until, limit=100))
    h_cat = Case("history category", "/api/v1/scores/history", {"limit": 100, "category": "HIGH"},
                 history_sql(category=True), {"category": "HIGH", "limit": 100}, "rows",
                 history_fn(db, priorities, access, category="HIGH", limit=100))

    wl_api = client.get(wl_first.path, params=wl_first.params).raise_for_status().json()
    h_api = client.get(h_dates.path, params=h_dates.params).raise_for_status().json()
    if not (wl_api["next_cursor"] and h_api["next_cursor"]):
        raise SystemExit("a first page has no next page: load more runs")
    last = conn.execute(wl_first.sql, wl_first.sql_params).fetchall()[-1]
    wl_next = Case("worklist cursor page", "/api/v1/worklist",
                   {"limit": 50, "cursor": wl_api["next_cursor"]}, worklist_sql(cursor=True),
                   {"after": last[-1], "after_at": last[8], "after_id": last[0], "limit": 50},
                   "entries", worklist_fn(db, priorities, limit=50, cursor=wl_api["next_cursor"]))
    last = conn.execute(h_dates.sql, h_dates.sql_params).fetchall()[-1]
    h_next = Case("history cursor page", "/api/v1/scores/history",
                  {**h_dates.params, "cursor": h_api["next_cursor"]},
                  history_sql(dates=True, cursor=True),
                  {**h_dates.sql_params, "after_at": last[7], "after_id": last[3]}, "rows",
                  history_fn(db, priorities, access, since=since, until=until, limit=100,
                             cursor=h_api["next_cursor"]))
    return [wl_first, wl_next, h_dates, h_cat, h_next]


def measure(cases: list[Case], client: httpx.Client, conn: psycopg.Connection[Any],
            counter: StatementCounter, *, repeats: int, warmup: int) -> None:
    """Each repetition times every case three ways, in an order that rotates."""
    for rep in range(warmup + repeats):
        for case in cases:
            def api(case: Case = case) -> dict[str, Any]:
                counter.reset()
                body = client.get(case.path, params=case.params).raise_for_status().json()
                case.statements.add(counter.count)
                return body

            def plain(case: Case = case) -> list[Any]:
                return conn.execute(case.sql, case.sql_params).fetchall()

            ways: list[tuple[str, Callable[[], Any]]] = [("api", api), ("plain", plain),
                                                         ("fn", case.fn)]
            ways = ways[rep % 3:] + ways[:rep % 3]
            results = {}
            for name, way in ways:
                results[name] = timed(way)
            if rep == 0:
                got, want = api_keys(case, results["api"][1]), plain_keys(case, results["plain"][1])
                if got != want or not got or api_keys(case, results["fn"][1]) != got:
                    raise SystemExit(f"{case.name}: the API, the plain query and the function "
                                     f"disagree ({len(got)} vs {len(want)} rows); fix the benchmark")
                case.rows = len(got)
            if rep >= warmup:
                case.api_ms.append(results["api"][0])
                case.plain_ms.append(results["plain"][0])
                case.fn_ms.append(results["fn"][0])


def http_floor(client: httpx.Client, repeats: int) -> tuple[float, float]:
    """p50, p95 of GET /healthz: no token, no database; what any response costs."""
    times = [timed(lambda: client.get("/healthz").raise_for_status())[0] for _ in range(repeats + 5)]
    return percentile(times[5:], 50), percentile(times[5:], 95)


def explain(cases: list[Case], client: httpx.Client, conn: psycopg.Connection[Any],
            counter: StatementCounter) -> None:
    for case in cases:
        counter.reset()
        client.get(case.path, params=case.params).raise_for_status()
        print(f"\n==== {case.name}: the product's statements")
        for statement, params in list(counter.last):
            if not statement.lstrip().upper().startswith("SELECT"):
                print(f"-- (not explained) {statement.split(chr(10))[0][:100]}")
                continue
            print(f"-- {' '.join(statement.split())[:160]}...")
            for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params):
                print("   " + line)
        print(f"==== {case.name}: plain")
        for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + case.sql, case.sql_params):
            print("   " + line)


def report(cases: list[Case]) -> list[dict[str, Any]]:
    header = (f"{'request':<22} {'rows':>4} {'API p50':>8} {'API p95':>8} {'plain p50':>9} "
              f"{'plain p95':>9} {'p95 ratio':>9} {'SQL/req':>7} {'fn p50':>7} {'fn p95':>7}")
    print(header)
    print("-" * len(header))
    out = []
    for c in cases:
        row: dict[str, Any] = {
            "request": c.name, "path": c.path,
            "params": {k: v for k, v in c.params.items() if k != "cursor"},
            "cursor": "cursor" in c.params, "rows": c.rows,
            "api_p50_ms": percentile(c.api_ms, 50), "api_p95_ms": percentile(c.api_ms, 95),
            "plain_p50_ms": percentile(c.plain_ms, 50), "plain_p95_ms": percentile(c.plain_ms, 95),
            "fn_p50_ms": percentile(c.fn_ms, 50), "fn_p95_ms": percentile(c.fn_ms, 95),
            "statements": sorted(c.statements),
        }
        row["ratio_p95"] = row["api_p95_ms"] / row["plain_p95_ms"]
        out.append(row)
        sql = "/".join(map(str, row["statements"]))
        print(f"{c.name:<22} {c.rows:>4} {row['api_p50_ms']:>8.2f} {row['api_p95_ms']:>8.2f} "
              f"{row['plain_p50_ms']:>9.2f} {row['plain_p95_ms']:>9.2f} {row['ratio_p95']:>8.2f}x "
              f"{sql:>7} {row['fn_p50_ms']:>7.2f} {row['fn_p95_ms']:>7.2f}")
    print(f"times in ms; p95 ratio = API p95 / plain SELECT p95 (goal <= {GOAL:g}); SQL/req = "
          "statements the server issued per request; fn = the route's query function and to_dict "
          "called in-process (no HTTP)")
    return out


def log_to_file(path: Path) -> None:
    """INFO JSON lines to ``path``, as ``triage api`` logs (one line per request)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.addFilter(StudyFilter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--studies", type=int, default=None, help="default: 4/5 of --runs")
    parser.add_argument("--members", type=int, default=5, help="ensemble members' scores stored")
    parser.add_argument("--view-scores", action="store_true",
                        help="also store each member's per-view scores (20 more rows a run with "
                             "5 members, as the product stores them; 2-3x the load time)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN (ANALYZE, BUFFERS) of each request's statements")
    args = parser.parse_args()
    for tool in ("initdb", "postgres", "psql"):
        if tool_path(tool) is None:
            sys.exit(f"{tool} (PostgreSQL) is not installed: apt-get install postgresql")
    studies = args.studies or args.runs * 4 // 5
    work = Path(tempfile.mkdtemp(prefix="triage-bench-api-"))
    pg = PostgresServer()
    server: ApiServer | None = None
    try:
        pg.start()
        url = pg.create_database("triage")
        t0 = time.perf_counter()
        upgrade(url)
        now = datetime.now(UTC).replace(microsecond=0)
        counts = load(url, runs=args.runs, studies=studies, members=args.members,
                      view_scores=args.view_scores, now=now, seed=args.seed)
        load_s = time.perf_counter() - t0
        print(f"PostgreSQL {tool_path('postgres')}: {counts['studies']} exams, {counts['runs']} "
              f"runs, {counts['scores']} scores loaded in {load_s:.0f} s", flush=True)

        log_to_file(work / "api.log")
        settings = load_settings(database_url=url, data_dir=work / "data", api_host="127.0.0.1",
                                 api_port=0)
        db = create_database(url)
        counter = StatementCounter()
        event.listen(db.engine, "before_cursor_execute", counter)
        with db.session() as session:
            token = create_token(session, TOKEN_NAME, Role.ADMIN, created_by="benchmark").secret
        server = ApiServer(settings, db)
        server.start()
        with (httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                           timeout=60) as client,
              psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=triage "
                              "options='-c jit=off'", autocommit=True) as conn):
            cases = build_cases(client, conn, db, [p.name for p in settings.priorities], now)
            measure(cases, client, conn, counter, repeats=args.repeats, warmup=args.warmup)
            floor = http_floor(client, args.repeats)
            loadavg = Path("/proc/loadavg").read_text().split()[:3]
            print(f"\n{args.repeats} repetitions after {args.warmup} warm-up; "
                  f"{os.cpu_count()} CPUs, load average {' '.join(loadavg)}")
            table = report(cases)
            print(f"GET /healthz (no token, no SQL): p50 {floor[0]:.2f} ms, p95 {floor[1]:.2f} ms: "
                  "the HTTP floor of every request")
            if args.explain:
                explain(cases, client, conn, counter)
        if args.json is not None:
            args.json.write_text(json.dumps({
                "benchmark": "api", "goal_ratio_p95": GOAL, **counts, "load_s": load_s,
                "members": args.members, "view_scores": args.view_scores,
                "repeats": args.repeats, "warmup": args.warmup,
                "cpus": os.cpu_count(), "loadavg": loadavg, "requests": table,
                "healthz_p50_ms": floor[0], "healthz_p95_ms": floor[1],
            }, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        if server is not None:
            server.stop()
        pg.destroy()
        for handler in logging.getLogger().handlers:
            handler.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
