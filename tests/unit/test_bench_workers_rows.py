"""bench.run's `workers` part: its rows say the ratio of 2 workers to 1 per side and
whether issue 20's goal is met, from the figures as compare() gives them."""

from __future__ import annotations

from bench.pipeline import WORKERS_GOAL, worker_rows


def figures(send: float, receive: float) -> dict[str, float]:
    return {"send_gbps": send, "receive_gbps": receive,
            "send_loop_cpu_us_per_64k": 5.0, "send_workers_cpu_us_per_64k": 60.0,
            "receive_loop_cpu_us_per_64k": 8.0, "receive_workers_cpu_us_per_64k": 61.0}


def test_the_ratio_and_its_verdict_per_side() -> None:
    rows = dict(worker_rows({"0": figures(9, 9), "1": figures(8, 8),
                             "2": figures(8 * WORKERS_GOAL, 12)}))
    assert rows["data path, no kernel, send: 2 workers / 1"].split()[0] == "1.80x"
    assert "met)" in rows["data path, no kernel, send: 2 workers / 1"]
    assert "NOT met" not in rows["data path, no kernel, send: 2 workers / 1"]
    assert "NOT met" in rows["data path, no kernel, receive: 2 workers / 1"]
    assert len(rows) == 5  # a row per count, a ratio per side


def test_no_ratio_without_both_counts() -> None:
    assert worker_rows(None) == []
    rows = worker_rows({"0": figures(9, 9)})
    assert [label for label, _ in rows] == [
        "data path, no kernel, 0 workers (0: inline): send / receive"]
