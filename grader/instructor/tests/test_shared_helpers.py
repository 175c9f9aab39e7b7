"""The helpers every phase's grader shares, checked without a GPU: the compile tier's verdict
(aot.assert_compiles) and the bandwidth grade (bench.bandwidth, bench.assert_bandwidth)."""
import pytest

from grader import aot, bench, timing


def _compiled(monkeypatch, results):
    monkeypatch.setattr(aot, "compile_all", lambda phase, tree, specs: results)
    recorded = {}
    return lambda: aot.assert_compiles(9, [], lambda key, value: recorded.setdefault(key, value)), recorded


def _result(arch, shared, runs_here=True, spill=0, **extra):
    return {"kernel": "k", "label": "bf16 D=128", "arch": arch, "runs_here": runs_here, "shared_bytes": shared,
            "registers": 255, "spill_bytes": spill, **extra}


def test_assert_compiles_records_and_passes(monkeypatch):
    results = [_result("sm_80", 160_000), _result("sm_90", 230_000)]
    check, recorded = _compiled(monkeypatch, results)
    assert check() == results and recorded == {"compiled": results}


def test_assert_compiles_names_a_compile_error_first(monkeypatch):
    check, _ = _compiled(monkeypatch, [_result("sm_90", 10**6), {"kernel": "k", "label": "fp16", "arch": "sm_80",
                                                                  "runs_here": True, "error": "phase 4: TODO"}])
    with pytest.raises(AssertionError, match=r"k \[fp16\] does not compile for sm_80: phase 4: TODO"):
        check()


def test_assert_compiles_holds_shared_memory_to_the_gpus_that_launch_the_kernel(monkeypatch):
    too_big_for_a100 = 200_000
    check, _ = _compiled(monkeypatch, [_result("sm_80", too_big_for_a100, runs_here=False),
                                       _result("sm_90", too_big_for_a100)])
    check()  # a Hopper tile compiled for sm_80 only to catch errors
    check, _ = _compiled(monkeypatch, [_result("sm_80", too_big_for_a100)])
    with pytest.raises(AssertionError, match="needs 200000 B of shared memory, more than sm_80's 166912 B"):
        check()


def test_assert_compiles_checks_spills_only_when_asked(monkeypatch):
    monkeypatch.setattr(aot, "compile_all", lambda phase, tree, specs: [_result("sm_90", 1000, spill=64)])
    aot.assert_compiles(9, [], lambda *a: None)
    with pytest.raises(AssertionError, match="spills 64 B per thread on sm_90"):
        aot.assert_compiles(9, [], lambda *a: None, no_spills=True)


@pytest.mark.parametrize("ms, passes", [(1.0, True), (2.0, False), (float("nan"), False)])
def test_bandwidth_against_the_copy(monkeypatch, ms, passes):
    monkeypatch.setattr(timing, "copy_bandwidth_gbs", lambda: 3000.0)
    monkeypatch.setattr(timing, "median_ms", lambda fn: ms)
    row = bench.bandwidth(lambda: None, 2e9, "softmax", 0.6, shape=[2, 3])
    assert row["shape"] == [2, 3] and row["copy_gbs"] == 3000.0 and row["required_ratio"] == 0.6
    if passes:
        assert row["gbs"] == pytest.approx(2000.0) and row["summary"].startswith("softmax 2000 GB/s = 67% of copy")
        bench.assert_bandwidth(row)
    else:
        with pytest.raises(AssertionError, match="softmax moved .* GB/s, .* of this device's copy bandwidth 3000 GB/s; "
                                                 "needs at least 60%"):
            bench.assert_bandwidth(row)
