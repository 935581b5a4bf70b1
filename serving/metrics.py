"""The server's Prometheus metrics (GET /metrics), on a registry of its own so that two servers in one
process (tests) never share counters. Names start with `flywheel_`; counters get `_total` appended by
prometheus_client."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Every metric the server exports, created together."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("flywheel_requests", "Requests to the generation and feedback routes, by route, "
                                "variant served (none: refused before routing) and HTTP status",
                                ["route", "variant", "status"], registry=r)
        self.latency = Histogram("flywheel_request_latency_seconds", "Arrival to complete answer of answered requests",
                                 ["route", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("flywheel_generated_tokens", "Completion tokens generated", ["variant"], registry=r)
        self.generation_errors = Counter("flywheel_generation_errors", "Requests whose generation failed (answered 500)",
                                         ["variant"], registry=r)
        self.batch_size = Histogram("flywheel_batch_size", "Requests per generate call (local backend)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.swaps = Counter("flywheel_adapter_swaps", "Routing changes of a registry alias; failed: the new adapter "
                             "could not be loaded and routing stayed as it was", ["alias", "result"], registry=r)
        self.served = Gauge("flywheel_served_version", "1 for the model version each alias routes to now",
                            ["alias", "model_version"], registry=r)
        self.registry_errors = Counter("flywheel_registry_read_errors", "Registry polls that failed (routing kept)",
                                       registry=r)
        self.capture_queue = Gauge("flywheel_capture_queue_depth", "Log records and feedback events waiting for the "
                                   "writer thread", registry=r)
        self.capture_written = Counter("flywheel_capture_written_records", "Log records written to the log files",
                                       registry=r)
        self.capture_dropped = Counter("flywheel_capture_dropped_records", "Answered requests whose log record could "
                                       "not be written (must stay 0: alert on any increase)", registry=r)
        self.capture_refused = Counter("flywheel_capture_refused_requests", "Requests answered 503 because the capture "
                                       "queue stayed full for serving.capture_block_s", registry=r)

    def set_served(self, routes: dict[str, str]) -> None:
        """{alias: model_version} now routed; earlier label sets are removed."""
        self.served.clear()
        for alias, version in routes.items():
            self.served.labels(alias, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
