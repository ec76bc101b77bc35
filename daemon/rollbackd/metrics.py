"""The daemon's own Prometheus metrics, on a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class DaemonMetrics:
    """Evaluations, findings, actions, rollbacks, recoveries, source errors, webhooks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.evaluations = Counter("rollbackd_evaluations", "Evaluation cycles run.", registry=r)
        self.findings = Gauge(
            "rollbackd_findings",
            "Findings of the last cycle by rule, severity and state.",
            ["rule", "severity", "state"],
            registry=r,
        )
        self.actions = Counter(
            "rollbackd_actions",
            "Decisions taken, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "rollbackd_rollbacks",
            "Rollbacks run, by service and outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self.recoveries = Counter(
            "rollbackd_recoveries",
            "Recovery verdicts, by service.",
            ["service", "verdict"],
            registry=r,
        )
        self.source_errors = Counter(
            "rollbackd_source_errors",
            "Cycles in which a source failed, by source.",
            ["source"],
            registry=r,
        )
        self.webhooks = Counter(
            "rollbackd_webhook_deliveries",
            "Webhook deliveries, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.connections_dropped = Counter(
            "rollbackd_http_connections_dropped",
            "HTTP connections the server closed to protect the daemon, by reason: "
            "header_timeout, body_timeout, evicted (over max_connections, the longest "
            "waiting one) or refused (over max_connections, none waiting).",
            ["reason"],
            registry=r,
        )
        self.cycle_seconds = Histogram(
            "rollbackd_cycle_duration_seconds",
            "Wall time of one evaluation cycle.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.firing_to_action = Histogram(
            "rollbackd_firing_to_action_seconds",
            "From a finding's first firing to the decision about it.",
            buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.pending_approvals = Gauge(
            "rollbackd_pending_approvals", "Rollbacks waiting for a person.", registry=r
        )
        self.leader = Gauge(
            "rollbackd_leader",
            "1 while this replica leads its cluster (evaluates and acts), 0 while it follows.",
            registry=r,
        )
        self.leader_changes = Counter(
            "rollbackd_leader_changes",
            "Changes of the cluster's leader (a new epoch) this replica saw.",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
