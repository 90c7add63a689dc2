"""interleaved.py (the CI smoke pass): round robin medians, a failing provider reported and left
out, and a generator case end to end at a tiny size."""
import time

import pytest

import interleaved as I


def test_round_robin_medians_and_a_failing_provider(capsys):
    calls = []

    def sleeper(name, s):
        def run():
            calls.append(name)
            time.sleep(s)
        return lambda: run

    def broken():
        raise RuntimeError("no compiler\nsecond line")

    med = I.timed({"fast": sleeper("fast", 0.002), "slow": sleeper("slow", 0.008), "broken": broken}, rounds=5)
    assert set(med) == {"fast", "slow"}
    assert "broken: failed (RuntimeError: no compiler)" in capsys.readouterr().out
    assert med["fast"] == pytest.approx(2.0, abs=1.5) and med["slow"] == pytest.approx(8.0, abs=3.0)   # ms
    assert calls.count("fast") == calls.count("slow") == 2 + 5          # warm-up twice, then once per round


def test_a_generator_case_at_a_tiny_size(monkeypatch, capsys):
    monkeypatch.setitem(I.GENERATOR_CASES, "tiny", (dict(n=2, width=16), 32, "exact", ["owf", "func.jvp", "manual"]))
    med = I.run_generator_case("tiny", rounds=2)
    assert set(med) == {"owf", "func.jvp", "manual", "gemm"} and all(v > 0 for v in med.values())
    out = capsys.readouterr().out
    assert "owf vs the best torch.func.jvp path:" in out and "| gemm |" in out
