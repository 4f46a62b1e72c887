"""The driver's progress while a run trains: a bar on a terminal, plain lines in a log."""

from __future__ import annotations

import threading


class Progress:
    """Polls the service and draws a progress bar on the driver."""

    def __init__(self, service, total: int, start: int, enabled: bool) -> None:
        self.service, self.total, self.start = service, total, start
        self.enabled = enabled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.enabled:
            self.thread.join(timeout=5)

    def _stats(self) -> dict | None:
        import ray

        try:
            return ray.get(self.service.stats.remote(), timeout=5)
        except Exception:  # the service may be restarting; try again
            return None

    @staticmethod
    def _info(s: dict) -> str:
        parts = []
        if s.get("phase", "training") != "training":
            parts.append(s["phase"])
        if s.get("problem"):
            parts.append("coupling writes failing: see loomray status")
        if s.get("steps_per_s"):
            parts.append(f"{s['steps_per_s']:.1f} it/s")
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s.get("cost_post") is not None:
            parts.append(f"cost {s['cost_post']:.3f}")
        if s.get("solve_ms") is not None:
            parts.append(f"solve {s['solve_ms']:.1f} ms")
        if s.get("wait_ms") is not None:
            parts.append(f"wait {s['wait_ms']:.1f} ms")
        return "  ".join(parts)

    def _run(self) -> None:
        import sys

        if not sys.stdout.isatty():  # a log file: plain lines, one every LINE_EVERY_S
            self._lines()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, refresh_per_second=2) as bar:
            task = bar.add_task("train", total=self.total, completed=self.start, info="")
            while not self.stop.wait(1.0):
                s = self._stats()
                if s is not None:
                    done = min(self.total, s["step"] + 1)
                    bar.update(task, completed=done, info=self._info(s))

    LINE_EVERY_S = 30.0

    def _lines(self) -> None:
        """Progress for `tail -f` of a redirected log: the step, the share done, the
        rate and the service's numbers, as plain text (no bar, no colours)."""
        last = None
        while not self.stop.wait(self.LINE_EVERY_S):
            s = self._stats()
            if s is None or s["step"] == last:
                continue
            last, done = s["step"], min(self.total, s["step"] + 1)
            line = f"train {done}/{self.total} ({100 * done / self.total:.0f}%)"
            print(f"{line}  {self._info(s)}".rstrip(), flush=True)
