"""The stats document: what ``/api/stats.json`` serves and the dashboard shows.

``{"generated_at", "last_run": {run row + figures} | None,
"cumulative": {figures, "runs": n}, "runs": [run rows]}``, where figures are
``StatsSummary.figures()`` plus ``"audit": AuditSummary.figures()``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit import AuditSummary
    from .store import Store
    from .stream_stats import StatsSummary

RUN_FIELDS = ("run_id", "producer", "source", "requested", "state", "reason", "started_at",
              "finished_at", "duration_s", "delivered", "kept", "quarantined")


#: States whose users count (a running run's so far); a failed or cancelled run counts none.
COUNTED_STATES = ("complete", "running")


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it: ``received`` = users that reached the consumer, ``delivered``
    = those that passed every check and count, ``quarantined`` = those that did not. None of a
    failed or cancelled run's users count (``counted`` false): its ``delivered``, ``kept`` and
    ``quarantined`` are 0, as ``infraetl-ctl status`` shows them (a review found the run table
    showing 39,000 users "delivered" for a cancelled run that counted none)."""
    out = {k: row.get(k) for k in RUN_FIELDS}
    out["received"] = row.get("delivered")
    out["counted"] = counted = row.get("state") in COUNTED_STATES
    if not counted:
        out["kept"] = out["quarantined"] = 0
    out["delivered"] = out["kept"]
    out["batches"] = row.get("applied")
    out["nat"] = (row.get("meta") or {}).get("nat")
    return out


def json_default(value: Any) -> Any:
    """What JSON makes of the rest: numpy scalars unwrapped, sets sorted, anything else a string."""
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def figures_json(stats: StatsSummary, audit: AuditSummary) -> str:
    """The figures of one set of summaries, ``{"stats": ..., "audit": ...}``, as JSON text: what
    the store keeps beside the summaries, so a render need not decode them (a full password
    tally is ~5 MB: 221 ms a render)."""
    doc = {"stats": stats.figures(), "audit": audit.figures()}
    try:
        return json.dumps(doc, default=json_default)
    except (TypeError, ValueError):  # a key JSON takes no default for (a numpy integer)
        return json.dumps(_plain_keys(doc), default=json_default)


def _plain_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if k is None or isinstance(k, (str, int, float)) else json_default(k): _plain_keys(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_keys(v) for v in value]
    return value


def read_figures(text: str) -> dict[str, Any]:
    """Inverse of :func:`figures_json` (NaN and infinities read as None, as the page takes them)."""
    return json.loads(text, parse_constant=lambda _: None)  # type: ignore[no-any-return]


def build_stats(store: Store, *, reveal: bool = False) -> dict[str, Any]:
    """Assemble the whole stats document from the store."""
    n_runs, figs = store.cumulative_figures()
    cumulative = figs["stats"]
    cumulative["audit"] = figs["audit"]
    cumulative["runs"] = n_runs
    last_run = None
    last_id = store.last_complete_run()
    if last_id is not None:
        run_figs = store.run_figures(last_id)
        row = store.run(last_id)
        if run_figs is not None and row is not None:
            last_run = run_row(row)
            last_run.update(run_figs["stats"])
            last_run["audit"] = run_figs["audit"]
    return {
        "generated_at": time.time(),
        "passwords_revealed": reveal,
        "last_run": last_run,
        "cumulative": cumulative,
        "runs": [run_row(r) for r in store.runs()],
    }
