"""The normalised density of a trained model: log ζ estimates, log_prob, owf.evaluate."""
import json
import math
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import owf
from owf.density import quadrature_log_zeta
from test_preimages import cubic_fold


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_ring):
    out = tmp_path_factory.mktemp("density") / "ring"
    shutil.copytree(trained_ring, out)
    return out


def test_log_prob_integrates_to_one_on_a_trained_model(run_dir):
    model = owf.load(run_dir)
    est = model.estimate_log_zeta(50_000, generator=torch.Generator().manual_seed(0))
    model.cache_log_zeta(est, save=False)
    quad = quadrature_log_zeta(model)                      # log ∫_domain exp(energy) on a fine grid
    integral = math.exp(quad["log_zeta"] - est.log_zeta)   # = ∫ exp(log_prob)
    assert abs(integral - 1) < 0.02, (integral, est)
    assert quad["mass_outside_domain"] < 1e-3              # this energy decays away from the data


def test_estimate_is_chunked_and_reports_its_error(run_dir):
    model = owf.load(run_dir)
    a = model.estimate_log_zeta(20_000, batch_size=20_000, generator=torch.Generator().manual_seed(1))
    b = model.estimate_log_zeta(20_000, batch_size=777, generator=torch.Generator().manual_seed(2))
    assert a.num_samples == b.num_samples == 20_000
    assert 0 < a.se < 0.1 and 0 < a.ess <= 20_000
    assert abs(a.log_zeta - b.log_zeta) < 5 * math.hypot(a.se, b.se)
    assert abs(a.se - math.sqrt(1 / a.ess - 1 / a.num_samples)) < 1e-12


def test_generator_proposal_beats_a_normal_one(run_dir):
    model = owf.load(run_dir)
    g = torch.Generator().manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = [model.estimate_log_zeta(100, generator=g).log_zeta for _ in range(10)]
        nrm = [model.estimate_log_zeta(100, "normal", generator=g).log_zeta for _ in range(10)]
    assert torch.tensor(gen).std() * 10 < torch.tensor(nrm).std()


def test_log_prob_needs_an_estimate_first(run_dir):
    model = owf.load(run_dir)
    model.zeta = None
    with pytest.raises(RuntimeError, match="estimate_log_zeta"):
        model.log_prob(torch.zeros(3, 2))


def test_bad_requests_are_refused(run_dir):
    model = owf.load(run_dir)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        model.estimate_log_zeta(0)
    with pytest.raises(ValueError, match="proposal='data'"):
        model.estimate_log_zeta(10, "data")
    real = model.energy
    model.energy = lambda x: torch.where(torch.arange(len(x)) % 4 == 0, float("inf"), real(x))
    with pytest.raises(ValueError, match="250 of 1000 importance samples had a non-finite energy"):
        model.estimate_log_zeta(1000)


def test_low_ess_is_flagged(run_dir):
    model = owf.load(run_dir)
    model.energy = lambda x: -1e4 * (x * x).sum(1)         # far sharper than the N(0, I) proposal
    with pytest.warns(RuntimeWarning, match="unreliable"):
        est = model.estimate_log_zeta(1000, "normal", generator=torch.Generator().manual_seed(0))
    assert est.low_ess and est.ess < 10
    model = owf.load(run_dir)
    assert not model.estimate_log_zeta(1000, generator=torch.Generator().manual_seed(0)).low_ess


def test_evaluate_cli(run_dir):
    p = subprocess.run([sys.executable, "-m", "owf.evaluate", str(run_dir), "--zeta-samples", "20000",
                        "--convergence-max-s", "300", "--ais-steps", "1600", "--ais-chains", "16"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads((run_dir / "eval.json").read_text())
    for k in ("log_zeta", "log_zeta_se", "ess", "num_samples", "modes", "hq", "log_zeta_quadrature", "test_nll",
              "true_nll", "det_negative_fraction", "det_positive_fraction", "folds", "log_zeta_ais"):
        assert k in res
    assert res["ais_chains"] == 1024 and res["ais_steps"] == 100
    assert abs(res["log_zeta_ais_minus_quadrature"]) < 0.2       # AIS beside importance sampling, in seconds
    assert abs(res["true_nll"] - (-4.289)) < 0.02            # the ring's entropy: log 8 + log(2πe σ²)
    for f in ("zeta_convergence.png", "energy_hist.png", "density.png"):
        assert (run_dir / f).stat().st_size > 0
    cached = torch.load(run_dir / "checkpoint.pt", weights_only=False)["log_zeta"]
    assert cached["log_zeta"] == res["log_zeta"]
    assert owf.load(run_dir).log_prob(torch.zeros(1, 2)).shape == (1,)


def test_evaluate_without_a_checkpoint(tmp_path):
    p = subprocess.run([sys.executable, "-m", "owf.evaluate", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "no checkpoint at" in p.stderr
    for given, run in ((tmp_path, tmp_path), (tmp_path / "checkpoint.pt", tmp_path), (tmp_path / "missing", tmp_path / "missing")):
        with pytest.raises(FileNotFoundError, match=f"--out {run}\\)"):       # the hint names the run folder
            owf.load(given)


class _LinearEnergy(torch.nn.Module):
    """D(x) = w·x₁: energy x₁, which grows without bound, so exp(energy) has no integral over the plane."""
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        return self.w * x[:, 0]


def test_density_is_normalised_on_the_domain_box(run_dir):
    model = owf.load(run_dir)
    model.D = _LinearEnergy(model.w)
    lo, hi = model.domain
    exact = math.log((math.exp(hi) - math.exp(lo)) * (hi - lo))    # ∫_lo^hi e^x1 dx1 · ∫_lo^hi dx2
    quad = quadrature_log_zeta(model)
    assert abs(quad["log_zeta"] - exact) < 1e-3, (quad, exact)
    assert quad["mass_outside_domain"] > 0.99                        # over the plane it would diverge
    est = model.estimate_log_zeta(200_000, "normal", generator=torch.Generator().manual_seed(4))
    assert abs(est.log_zeta - exact) < 4 * est.se + 1e-3, (est, exact)
    model.cache_log_zeta(est, save=False)
    x = torch.tensor([[0.0, 0.0], [hi + 0.01, 0.0], [0.0, lo - 0.01]])
    lp = model.log_prob(x)
    assert lp[0] == pytest.approx(-est.log_zeta) and lp[1] == -math.inf and lp[2] == -math.inf


def test_density_table_checks_each_target():
    from owf.experiments.density_table import row, targets
    e = {"log_zeta_minus_quadrature": 0.04, "integral_of_density": 0.961, "nll_gap": 0.3,
         "zeta_std_at_S100": {"generator": 0.2, "normal": 1.9, "data": 0.1}, "modes": 25, "hq": 0.81,
         "log_zeta": 1.0, "log_zeta_se": 0.001, "log_zeta_quadrature": 0.96, "det_negative_fraction": 0.001,
         "det_positive_fraction": 0.999, "energy_mass_outside_domain": 0.0}
    assert targets(e) == {"zeta": True, "integral": False, "nll": True, "spread": False}
    assert row("r", e).endswith("| 2/4 |") and "| 0.1% |" in row("r", e)
    assert "| - | - |" in row("r", e)                          # evaluated before the preimage search
    e.update(multi_cover=0.0848, log_zeta_eq10_minus_quadrature=0.1605)
    assert "| 8.5% | +0.161 | - |" in row("r", e)
    e.update(log_zeta_S1e4_worst_minus_quadrature=-0.06)        # one of the 10 estimates at S = 10^4 is off
    assert not targets(e)["zeta"] and "| -0.060 |" in row("r", e)


def test_signed_estimate_is_the_signed_importance_sum():
    """signed_estimate from two sides' partials against the signed weights summed in float64."""
    from owf.density import signed_estimate
    from owf_kernels import log_zeta_partials
    g = torch.Generator().manual_seed(0)
    l = torch.randn(5000, generator=g, dtype=torch.float64) * 2
    minority = torch.rand(5000, generator=g) < 0.1
    parts = [log_zeta_partials(l.masked_fill(m, -math.inf), torch.zeros_like(l)) for m in (minority, ~minority)]
    w = torch.where(minority, -l.exp(), l.exp())
    log_zeta, se, ess = signed_estimate(*parts)
    assert log_zeta == pytest.approx(math.log(w.mean()), abs=1e-12)
    assert se == pytest.approx(float(w.std(correction=0) / math.sqrt(5000) / w.mean()), rel=1e-9)
    assert ess == pytest.approx(float(w.sum() ** 2 / (w * w).sum()), rel=1e-9)


class _CubicFold(torch.nn.Module):
    """y = (u1, u2³ - 3u2): proper, degree 1, folded: |y2| < 2 has three preimages (+, -, +)."""
    n = 2
    event_shape = (2,)
    components = 1

    def noise(self, n, generator=None):
        return torch.randn(n, 2, generator=generator)

    def log_latent(self, u):
        return -0.5 * (u * u).sum(1) - math.log(2 * math.pi)

    def logdet(self, u, method="exact", generator=None, signed=False, chunk=None):
        y = torch.stack([u[:, 0], u[:, 1] ** 3 - 3 * u[:, 1]], 1)
        det = 3 * u[:, 1] ** 2 - 3
        return y, det.abs().log(), det.sign()

    def sample_with_log_prob(self, n, method="exact", generator=None, signed=False, chunk=None):
        u = self.noise(n, generator)
        y, ld, sign = self.logdet(u)
        return y, self.log_latent(u) - ld, ld, sign

    def jacobian_columns(self, u):                # for the preimage search
        return cubic_fold(u)


class _GaussianEnergy(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):            # energy D/w = log N(x; 0, I)
        return self.w * (-0.5 * (x * x).sum(1) - math.log(2 * math.pi))


def _cubic_fold_model(run_dir):
    """The trained model with G = the cubic fold and the energy log N(x; 0, I), and the exact log ζ
    on its domain box [lo, hi]²: 2 log(Φ(hi) - Φ(lo))."""
    model = owf.load(run_dir)
    model.G, model.D = _CubicFold(), _GaussianEnergy(model.w)
    lo, hi = model.domain
    return model, 2 * math.log(torch.special.ndtr(torch.tensor(hi)) - torch.special.ndtr(torch.tensor(lo)))


def test_signed_weights_undo_a_fold(run_dir):
    model, exact = _cubic_fold_model(run_dir)
    signed = model.estimate_log_zeta(400_000, generator=torch.Generator().manual_seed(1), preimages=False)
    plain = model.estimate_log_zeta(400_000, generator=torch.Generator().manual_seed(1), signed=False,
                                    preimages=False)
    assert abs(signed.log_zeta - exact) < 4 * signed.se + 1e-3, (signed, exact)
    assert plain.log_zeta - exact > 0.5, (plain, exact)             # folded region counted 3 times


def test_all_preimages_undo_a_fold_without_signs(run_dir):
    """The default for 2D: q summed over the three sheets, no signs (owf.preimages)."""
    model, exact = _cubic_fold_model(run_dir)
    est = model.estimate_log_zeta(40_000, generator=torch.Generator().manual_seed(1))
    assert est.preimages and 0.9 < est.multi_cover < 0.96     # |y2| < 2 where |u2| < 2: P = 0.954
    assert abs(est.log_zeta - exact) < 4 * est.se + 0.01, (est, exact)


def test_zeta_by_mode_splits_both_estimates(run_dir):
    """The per-mode shares add up (in log space) to the whole quadrature and to a whole importance
    estimate from the same generator stream."""
    from owf.experiments.zeta_by_mode import zeta_by_mode
    rows = zeta_by_mode(run_dir, samples=20_000, chunk=10_000)
    assert len(rows) == 8
    quad = torch.logsumexp(torch.tensor([q for _, _, q, _ in rows], dtype=torch.float64), 0)
    assert float(quad) == pytest.approx(quadrature_log_zeta(owf.load(run_dir))["log_zeta"], abs=1e-9)
    is_total = float(torch.logsumexp(torch.tensor([i for _, i, _, _ in rows], dtype=torch.float64), 0))
    assert sum(n for *_, n in rows) == pytest.approx(1.0, abs=1e-12)    # every sample has a nearest mode
    est = owf.load(run_dir).estimate_log_zeta(20_000, batch_size=10_000, generator=torch.Generator().manual_seed(0))
    assert is_total == pytest.approx(est.log_zeta, abs=1e-6)


def test_cover_counts_sees_a_double_cover():
    """y = u (one sheet everywhere) and y = u² as a complex number (two sheets, both with det J =
    4|u|² > 0, over every disc away from 0): the latent quadrature counts 1 and 2, signed and not."""
    from owf.experiments.zeta_by_mode import cover_counts
    means = torch.tensor([[1.0, 0.0], [0.0, -1.5]])

    def identity(u):
        return u, torch.zeros(len(u)), torch.ones(len(u))

    def square(u):
        y = torch.stack([u[:, 0] ** 2 - u[:, 1] ** 2, 2 * u[:, 0] * u[:, 1]], 1)
        return y, torch.log(4 * (u ** 2).sum(1)), torch.ones(len(u))

    for (c, cs) in cover_counts(identity, means, 0.2, half_width=3, res=600):
        assert c == pytest.approx(1, abs=0.03) and cs == pytest.approx(1, abs=0.03)
    for (c, cs) in cover_counts(square, means, 0.2, half_width=3, res=600):
        assert c == pytest.approx(2, abs=0.05) and cs == pytest.approx(2, abs=0.05)


def test_continue_run_reports_against_the_model_and_leaves_the_run_alone(run_dir):
    """owf.experiments.continue_run (the README's mechanism checks): its step-0 line agrees with the
    loaded model's own energy and quadrature, it reports on the schedule asked, and it only reads the run."""
    from owf.experiments.continue_run import continue_run
    before = (run_dir / "checkpoint.pt").read_bytes()
    rows = continue_run(run_dir, steps=4, reports=2, mode=3, defensive=0.25, g_alpha=0.75)
    assert [r["step"] for r in rows] == [0, 2, 4] and {r["mode"] for r in rows} == {3}
    model = owf.load(run_dir)
    with torch.no_grad():
        e = model.energy(model.data.means)
    others = torch.cat([e[:3], e[4:]])
    assert rows[0]["watched_lead"] == pytest.approx(float(e[3] - others.median()), abs=2e-3)
    assert rows[0]["log_zeta_quadrature"] == pytest.approx(quadrature_log_zeta(model)["log_zeta"], abs=1e-3)
    assert rows[0]["modes"] >= 5 and rows[0]["watched_samples"] >= rows[0]["fewest_samples"]   # bounds: the
    # 1,500-step model's trajectory differs between CPUs
    assert rows[2] != rows[0]                                       # it trained
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    thinnest = continue_run(run_dir, steps=1, reports=1)[0]
    assert thinnest["watched_samples"] == thinnest["fewest_samples"]
    with pytest.raises(ValueError, match="steps=0"):
        continue_run(run_dir, steps=0)


@pytest.mark.parametrize("module", ["owf.evaluate", "owf.experiments.continue_run", "owf.experiments.zeta_by_mode"])
def test_entry_points_name_an_unreadable_checkpoint(module, tmp_path, capsys):
    """A run folder whose checkpoint.pt is not a checkpoint: one line that names the file, exit 2."""
    import importlib
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert importlib.import_module(module).main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'checkpoint.pt'} is not a readable owf checkpoint" in err
    with pytest.raises(ValueError, match="is not a readable owf checkpoint"):
        owf.load(tmp_path)
