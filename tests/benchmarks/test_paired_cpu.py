"""benchmarks/paired_cpu.py: the paired rounds alternate which model runs first, drop the warm-up rounds, and
report the median of the per-round ratios (checked on a fake clock, where each step's duration is known)."""
from qknorm.benchmarks import paired_cpu


def test_rounds_alternate_skip_warmup_and_report_the_median_paired_ratio(monkeypatch):
    clock, calls = [0.0], []
    durations = {"ours": iter([9.0, 9.0, 1.0, 2.0, 3.0]), "theirs": iter([9.0, 9.0, 2.0, 2.0, 2.0])}

    def step(name):
        calls.append(name)
        clock[0] += next(durations[name])

    monkeypatch.setattr(paired_cpu.time, "perf_counter", lambda: clock[0])
    t = paired_cpu.time_pair(lambda: step("ours"), lambda: step("theirs"), rounds=3, warmup=2)
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours", "ours", "theirs"]
    assert (t.ours_ms, t.theirs_ms) == (2000.0, 2000.0)  # the 9 s warm-up steps are not counted
    assert t.ratio == 1.0 and (t.q25, t.q75) == (0.5, 1.5)  # ratios 0.5, 1.0, 1.5
