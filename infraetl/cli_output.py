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
    head = f"{'RUN':<24} {'STATE':<10} {'REQUESTED':>9} {'SENT':>5} {'ACKED':>5} {'APPLIED':>8}  REASON"
    lines = [head]
    for r in runs:
        lines.append(
            f"{r['run_id']:<24} {r['state']:<10} {r['requested'] or 0:>9} {r['sent']:>5} "
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

    def __call__(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = row.get("applied_users") or 0
        width = 30
        filled = int(width * min(done, self.requested) / max(self.requested, 1))
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] fetched {row.get('produced', 0)}/{self.requested}"
                f"  applied {done}/{self.requested}  {time.monotonic() - self._t0:5.1f}s")
        if line != self._last:
            click.echo(line, nl=False, err=True)
            self._last = line

    def close(self) -> None:
        """End the progress line."""
        if self.enabled and self._last:
            click.echo("", err=True)
