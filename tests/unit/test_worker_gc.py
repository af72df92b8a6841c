"""The worker process's garbage collector (sender.service.tune_gc)."""

from __future__ import annotations

import gc

from sender.service import GC_THRESHOLDS, tune_gc


def test_a_worker_process_tunes_its_garbage_collector() -> None:
    """tune_gc (run by run_worker, the worker process's own loop): start-up objects frozen
    out of every later collection, thresholds raised; restored here for the test process."""
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000
        assert gc.get_count()[0] < GC_THRESHOLDS[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
