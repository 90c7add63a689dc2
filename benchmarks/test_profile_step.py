"""profile_step.py at tiny sizes (the CI smoke pass): the op clock leaves the step's results alone
(it re-runs in-place and out= ops on copies), and the report adds up."""
import pytest
import torch

import profile_step as PS
import providers as P


@pytest.mark.parametrize("method,n", [("exact", 2), ("jvp1", 16)])
def test_the_op_clock_does_not_change_the_step(method, n):
    G = P.generator(n, 16)
    step = P.generator_step_fn("owf", G, 32, method)
    want = step()
    clock = PS.OpClock()
    with clock:
        got = step()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    names = {key[0].overloadpacket.__name__ for key, _ in clock.step}
    assert {"mm", "addmm"} & names, names                      # the layers' GEMMs were seen
    assert all(dt >= 0 for _, dt in clock.step)


def test_profile_report():
    r = PS.profile(n=2, width=16, B=32, method="exact", steps=2, rounds=2, top=5)
    assert r["by_category"]["GEMMs"] > 0 and r["n_ops"] > 10
    assert sum(r["by_category"].values()) + r["outside"] == pytest.approx(r["step"])
    assert len(r["ops"]) >= 5 and "| GEMMs |" in r["table"]
    assert r["table"].count("\n| ") >= 4 + 5                    # the category rows and the top 5 ops
