"""The coupling service's live numbers as Ray metrics (Prometheus, the dashboard)."""

from __future__ import annotations


class ServiceTelemetry:
    """ray.util.metrics when running inside Ray, nothing otherwise."""

    def __init__(self, run: str) -> None:
        self.enabled = False
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Gauge, Histogram
        except ImportError:
            return
        tags = {"run": run}
        latency = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0]

        def tagged(metric):
            return metric.set_default_tags(tags)

        self.solve = tagged(
            Histogram(
                "loomray_coupling_solve_seconds",
                "Seconds per coupling solve (global batch).",
                boundaries=latency,
                tag_keys=("run",),
            )
        )
        self.wait = tagged(
            Histogram(
                "loomray_worker_wait_seconds",
                "Seconds a training worker blocked on the service per step.",
                boundaries=latency,
                tag_keys=("run",),
            )
        )
        self.swaps = tagged(
            Counter("loomray_coupling_swaps", "Noise seeds moved by the solves.", tag_keys=("run",))
        )
        self.pre = tagged(
            Gauge(
                "loomray_coupling_cost_pre",
                "Mean pair cost of the last batch before its solve.",
                tag_keys=("run",),
            )
        )
        self.post = tagged(
            Gauge(
                "loomray_coupling_cost_post",
                "Mean pair cost of the last batch after its solve.",
                tag_keys=("run",),
            )
        )
        self.queue = tagged(
            Gauge(
                "loomray_coupling_queue_depth",
                "Steps submitted but not yet solved.",
                tag_keys=("run",),
            )
        )
        self.step = tagged(Gauge("loomray_coupling_step", "Last solved step.", tag_keys=("run",)))
        self.loss = tagged(
            Gauge("loomray_train_loss", "Training loss (rank 0).", tag_keys=("run",))
        )
        self.images = tagged(
            Gauge(
                "loomray_train_images_per_second",
                "Training throughput over all workers.",
                tag_keys=("run",),
            )
        )
        self.snapshot_failed = tagged(
            Gauge(
                "loomray_coupling_snapshot_failed",
                "1 while the coupling snapshot fails (the journal grows), else 0.",
                tag_keys=("run",),
            )
        )
        self.enabled = True
