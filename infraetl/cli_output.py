"""Formatting for infraetl-ctl's output (the library never prints)."""

from __future__ import annotations

import json
import time
from typing import Any

import click


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def runs_table(runs: list[dict[str, Any]]) -> str:
    """The runs as a fixed-width table."""
    if not runs:
        return "no runs yet"
    # SPOOLED: batches made and spooled, each sent as soon as the consumer takes it (the column
    # said SENT, which batches stuck in the spool behind a consumer that was down were not).
    head = f"{'RUN':<24} {'STATE':<10} {'REQUESTED':>9} {'SPOOLED':>7} {'ACKED':>5} {'APPLIED':>8}  REASON"
    lines = [head]
    for r in runs:
        lines.append(
            f"{r['run_id']:<24} {r['state']:<10} {r['requested'] or 0:>9} {r['sent']:>7} "
            f"{r['acked']:>5} {r['applied_users']:>8}  {r.get('reason') or ''}"
        )
    return "\n".join(lines)


class Progress:
    """A one-line progress display on stderr for a waiting run."""

    def __init__(self, requested: int, enabled: bool) -> None:
        self.requested = requested
        self.enabled = enabled
        self._last = ""
        self._t0 = time.monotonic()
        self._row: dict[str, Any] = {}

    def __call__(self, row: dict[str, Any]) -> None:
        self._row = row
        if not self.requested and type(row.get("requested")) is int:
            self.requested = row["requested"]  # ``wait`` learns it from the first answer
        self._draw("")

    def unanswered(self, error: Exception) -> None:
        """A poll went unanswered: say so, and keep the clock going, until one is."""
        self._draw("  (the producer is not answering; retrying)")

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        row = self._row
        done = row.get("applied_users") or 0
        width = 30
        filled = int(width * min(done, self.requested) / max(self.requested, 1))
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] fetched {row.get('produced', 0)}/{self.requested}"
                f"  applied {done}/{self.requested}  {time.monotonic() - self._t0:5.1f}s{note}")
        if line != self._last:
            # Pad over the end of a longer line drawn before.
            click.echo(line.ljust(len(self._last)), nl=False, err=True)
            self._last = line

    def close(self) -> None:
        """End the progress line."""
        if self.enabled and self._last:
            click.echo("", err=True)
