"""The benchmarks' clock: how many calls it makes and what it waits on (not how fast)."""

from funcprop import timing


def test_timer_runs_the_call_back_to_back_and_waits_on_the_last_result():
    calls, waited = [], []
    run = timing.timer(lambda: calls.append(len(calls)) or len(calls), wait=waited.append)
    seconds = run(4)
    assert len(calls) == 4 and waited == [4] and seconds >= 0


def test_median_seconds_warms_up_first():
    calls, waited = [], []
    timing.median_seconds(lambda: calls.append(1) or len(calls), 3, warmup=2, wait=waited.append)
    assert len(calls) == 5 and waited == [1, 2, 3, 4, 5]
