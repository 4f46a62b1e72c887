"""The driver's progress when its output is a log file: plain lines as it goes."""

import threading

from loomray.train.progress import Progress


def test_a_redirected_log_gets_plain_progress_lines_as_the_run_goes(capsys, monkeypatch):
    progress = Progress(service=None, total=200, start=0, enabled=True)
    steps = iter([9, 9, 99, 149])
    stats = {"phase": "training", "steps_per_s": 3.25, "loss": 0.1234, "wait_ms": 1.5}
    monkeypatch.setattr(progress, "_stats", lambda: {**stats, "step": next(steps, 149)})
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.01)
    thread = threading.Thread(target=progress._lines)
    thread.start()
    threading.Event().wait(0.3)
    progress.stop.set()
    thread.join(5)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "train 10/200 (5%)  3.2 it/s  loss 0.1234  wait 1.5 ms",  # a step is printed once
        "train 100/200 (50%)  3.2 it/s  loss 0.1234  wait 1.5 ms",
        "train 150/200 (75%)  3.2 it/s  loss 0.1234  wait 1.5 ms",
    ]
    assert "\x1b[" not in "".join(lines)
