"""Prometheus metrics of the consumer (one registry per daemon, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .wire import REASONS


class ConsumerMetrics:
    """Counters for batches, users, duplicates, rejections by reason and time per stage."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.batches = Counter("infraetl_batches_applied", "Data batches applied", registry=r)
        self.users = Counter("infraetl_users_applied", "Users applied (after validation) as their batches "
                             "committed; those of a run that then failed or was cancelled count on no figure "
                             "(infraetl_runs_given_up_total)", registry=r)
        self.duplicates = Counter("infraetl_batches_duplicate", "Batches already applied (re-sends), or of a run "
                                  "already over, skipped and ACKed again",
                                  registry=r)
        self.runs = Counter("infraetl_runs_completed", "Runs completed and rendered", registry=r)
        # A cancelled run's 25,000 users showed only as applied (a review): runs that end otherwise.
        self.given_up = Counter("infraetl_runs_given_up", "Runs that failed or were cancelled (none of their "
                                "users counted), by state", ["state"], registry=r)
        for state in ("failed", "cancelled"):
            self.given_up.labels(state)
        self.rejected = Counter("infraetl_frames_rejected", "Frames dropped, by reason", ["reason"], registry=r)
        for reason in REASONS:
            self.rejected.labels(reason)  # every reason shows, at 0, from the start
        self.stage_seconds = Counter("infraetl_stage_seconds", "Time spent per processing stage",
                                     ["stage"], registry=r)
        self.store_ok = Gauge("infraetl_store_writable", "1 while the state database accepts writes",
                              registry=r)
        self.store_ok.set(1)
        self.last_render = Gauge("infraetl_render_last_seconds",
                                 "Wall seconds of the last whole re-render: figures from the store, the "
                                 "page, its files written, the server's copy and the announcement",
                                 registry=r)
        self.scorer_failures = Counter("infraetl_zxcvbn_helper_failures",
                                       "Times the zxcvbn helper process died or hung (then restarted)",
                                       registry=r)
        self.worker_failures = Counter("infraetl_batch_worker_failures",
                                       "Times a batch worker process died, hung or answered out of step "
                                       "(its batches then handled in the daemon; it is restarted)",
                                       registry=r)

    def stage(self, name: str, seconds: float) -> None:
        """Add time to a stage."""
        self.stage_seconds.labels(name).inc(seconds)

    def value(self, sample: str) -> float:
        """The current value of one sample (public API, not a counter's internals)."""
        return self.registry.get_sample_value(sample) or 0.0

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
