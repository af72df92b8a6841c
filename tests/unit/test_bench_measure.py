"""The benchmark harness's attribution of a latency tail (benchmarks/measure.py): pure logic,
no services."""

from __future__ import annotations

from benchmarks.measure import MachineSampler, stalls
from benchmarks.report import _episodes


def test_slow_jobs_enqueued_together_are_one_episode() -> None:
    timed = [(10.00, 0.005), (10.01, 0.120), (10.02, 0.130), (10.20, 0.090),  # one stall
             (10.30, 0.004), (12.00, 0.300),  # a fast job between; a lone slow one later
             (12.05, 0.010)]
    episodes = stalls(timed, threshold=0.05)
    assert [(round(a, 2), n, w) for a, _, n, w in episodes] == [(10.01, 3, 0.130),
                                                                (12.00, 1, 0.300)]
    first_end = episodes[0][1]
    assert abs(first_end - (10.20 + 0.090)) < 1e-9  # the last one of the stall accepted


def test_no_slow_job_no_episode() -> None:
    assert stalls([(1.0, 0.01), (1.1, 0.02)], threshold=0.05) == []


def test_an_episode_gets_the_worst_machine_sample_while_it_lasted() -> None:
    sampler = MachineSampler(every=0.05)
    sampler.samples = [(100.00, 1.0, 0.0, 0.0, 0.001), (100.05, 2.0, 1.5, 0.5, 0.004),
                       (100.10, 1.2, 0.0, 0.9, 0.002), (101.00, 0.5, 1.9, 0.0, 0.0)]
    assert sampler.during(100.02, 100.08) == {"busy": 2.0, "iowait": 1.5, "steal": 0.9,
                                              "loop_lag_ms": 4.0}
    # no sample inside (a late sampler): the nearest to its end, the one at 101.00, whose
    # deltas cover 100.10-101.00 and so the episode
    assert sampler.during(100.5, 100.6)["iowait"] == 1.9
    assert MachineSampler().during(1.0, 2.0) == {}


def test_the_table_names_the_worst_episode() -> None:
    assert _episodes([]) == "none"
    assert _episodes([{"worst_ms": 60.4, "iowait": 0.5, "steal": 0.0},
                      {"worst_ms": 129.8, "iowait": 0.0, "steal": 0.9}]) == \
        "2 · worst 130 ms (iowait 0.5, steal 0.9)"


def test_an_import_time_is_read_from_the_modules_own_line() -> None:
    """benchmarks/imports.py: the module's top-level ``-X importtime`` line, not a nested
    module whose name ends the same."""
    from benchmarks.imports import cumulative_us

    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |     sender.client.x\n"
              "import time:      5178 |     266861 | sender.client\n")
    assert cumulative_us(stderr, "sender.client") == 266861
