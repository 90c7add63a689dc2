"""interleaved.py (the CI smoke pass): round robin medians, a failing provider reported and left
out, and a generator case end to end at a tiny size."""
import pytest

import interleaved as I


class FakeClock:
    """perf_counter that advances only when a provider 'runs': the medians are exact, whatever the
    machine's load (a test of real sleeps would depend on the scheduler)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_round_robin_medians_and_a_failing_provider(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(I, "time", clock)
    calls = []

    def provider(name, costs):
        costs = iter(costs)

        def run():
            calls.append(name)
            clock.now += next(costs)
        return lambda: run

    def broken():
        raise RuntimeError("no compiler\nsecond line")

    # two warm-ups (timed() and round_robin()), then 5 rounds; the medians ignore the outliers
    fast = provider("fast", [1.0, 1.0, 0.002, 0.003, 0.001, 0.5, 0.002])
    slow = provider("slow", [1.0, 1.0, 0.008, 0.009, 0.007, 0.008, 9.0])
    med = I.timed({"fast": fast, "slow": slow, "broken": broken}, rounds=5)
    assert set(med) == {"fast", "slow"}
    assert "broken: failed (RuntimeError: no compiler)" in capsys.readouterr().out
    assert med["fast"] == pytest.approx(2.0) and med["slow"] == pytest.approx(8.0)      # ms
    assert calls.count("fast") == calls.count("slow") == 2 + 5          # warm-up twice, then once per round


def test_a_generator_case_at_a_tiny_size(monkeypatch, capsys):
    monkeypatch.setitem(I.GENERATOR_CASES, "tiny", (dict(n=2, width=16), 32, "exact", ["owf", "func.jvp", "manual"]))
    med = I.run_generator_case("tiny", rounds=2)
    assert set(med) == {"owf", "func.jvp", "manual", "gemm"} and all(v > 0 for v in med.values())
    out = capsys.readouterr().out
    assert "owf vs the best torch.func.jvp path:" in out and "| gemm |" in out


def test_a_dcgan_case_at_a_tiny_size(monkeypatch, capsys):
    import providers as P
    monkeypatch.setattr(P, "DCGAN_CASES", dict(P.DCGAN_CASES, **{"28x28x1": P.DCGAN_SMOKE["28x28x1"]}))
    monkeypatch.setattr(I, "DCGAN_B", 8)
    for name in ("dcgan_jvp_fn", "dcgan_train_step_fn"):      # the two that torch.compile the compile provider
        monkeypatch.setattr(P, name, _without_compile(getattr(P, name)))
    med = I.run_dcgan_case("dcgan 28x28x1, B=64", rounds=2)
    assert {"owf fwd", "owf step", "owf train", "func.jvp step", "forward_ad train", "plain fwd", "plain train"} <= set(med)
    out = capsys.readouterr().out
    assert "| owf | " in out and "| forward_ad | " in out and "| plain forward |" in out and "the floor" in out


def _without_compile(real):
    """The compile provider is the slow part of a smoke pass: it takes the func.jvp path here."""
    return lambda p, *a: real("func.jvp" if p == "compile" else p, *a)
