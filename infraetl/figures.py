"""The stats document: what ``/api/stats.json`` serves and the dashboard shows.

``{"generated_at", "last_run": {run row + figures} | None,
"cumulative": {figures, "runs": n}, "runs": [run rows]}``, where figures are
``StatsSummary.figures()`` plus ``"audit": AuditSummary.figures()``.
"""

from __future__ import annotations

import time
from typing import Any

from .store import Store

RUN_FIELDS = ("run_id", "producer", "source", "requested", "state", "reason", "started_at",
              "finished_at", "duration_s", "delivered", "kept", "quarantined")


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it (``delivered`` = users that passed every check)."""
    out = {k: row.get(k) for k in RUN_FIELDS}
    out["received"] = row.get("delivered")
    out["delivered"] = row.get("kept")
    out["batches"] = row.get("applied")
    out["nat"] = (row.get("meta") or {}).get("nat")
    return out


def build_stats(store: Store, *, reveal: bool = False) -> dict[str, Any]:
    """Assemble the whole stats document from the store."""
    n_runs, cum_stats, cum_audit = store.cumulative()
    cumulative = cum_stats.figures()
    cumulative["audit"] = cum_audit.figures()
    cumulative["runs"] = n_runs
    last_run = None
    last_id = store.last_complete_run()
    if last_id is not None:
        summaries = store.run_summaries(last_id)
        row = store.run(last_id)
        if summaries is not None and row is not None:
            last_run = run_row(row)
            last_run.update(summaries[0].figures())
            last_run["audit"] = summaries[1].figures()
    return {
        "generated_at": time.time(),
        "passwords_revealed": reveal,
        "last_run": last_run,
        "cumulative": cumulative,
        "runs": [run_row(r) for r in store.runs()],
    }
