"""Image evaluation: the exact log q in chunks, both log ζ̂ estimators on the same samples, the NLL's
dequantisation and bits/dim, the Inception-FID code path with a stand-in network, and
`python -m owf.evaluate` on a tiny image run with all its figures and its bad input."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import owf
from owf.config import Config
from owf.dcgan import DCGANFlow
from owf.evaluate import evaluate_run, main as evaluate_main
from owf.fid import inception_fid
from owf import image_eval
from owf.image_eval import dequantise, heldout_nll
from owf.images import load_images
from owf.train import train

TINY = dict(data="fashion-mnist", g_hidden="16,4", d_hidden="4,8", batch=16, samples=16, log_every=10,
            fid_every=0, sample_every=10 ** 6, ckpt_every=10 ** 6, device="cpu", threads=1, steps=20, catch_up=0)


def test_the_exact_log_det_in_chunks_is_the_whole_one():
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 4), latent=10).double().eval()
    u = G.noise(3)
    _, whole, s1 = G.logdet(u, "exact", signed=True)
    for chunk in (7, 32, 64):
        _, part, s2 = G.logdet(u, "exact", signed=True, chunk=chunk)
        torch.testing.assert_close(part, whole)
        assert torch.equal(s1, s2)
    G.train()                                                     # train mode: the statistics move once per call
    G.logdet(u, "exact", chunk=7)
    bn = G.net[2]
    assert int(bn.num_batches_tracked) == 1


def test_dequantised_nll_of_the_uniform_density_is_8_bits_per_dim():
    """A model whose P_D is uniform on [-1, 1]^n: -log P(x) = n log 2 - n log(2/256) = n log 256 nats."""
    class Uniform:
        zeta = type("Z", (), {"se": 0.5, "log_zeta": 0.0})()

        def energy_on_domain(self, x):
            return torch.full((len(x),), -x[0].numel() * math.log(2.0))
    u8 = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    res = heldout_nll(Uniform(), u8)
    assert res["test_bits_per_dim"] == pytest.approx(8.0, abs=1e-6)             # the energy is float32
    assert res["test_nll_nats"] == pytest.approx(16 * math.log(256), abs=1e-4)
    x = dequantise(u8, torch.Generator().manual_seed(0))
    assert (x >= -1).all() and (x < 1).all() and torch.equal(((x + 1) * 128).floor().to(torch.uint8), u8)
    # every image scores the same, so the error bar is log ζ̂'s alone: the replicates' spread if given,
    # else the estimate's own se
    assert res["test_nll_se"] == pytest.approx(0.5)
    assert heldout_nll(Uniform(), u8, zeta_sd=3.5)["test_nll_se"] == pytest.approx(3.5)


def test_both_estimators_on_the_same_samples(tmp_path, fashion_root):
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), **TINY), progress=False)
    model = owf.load(run)
    assert model.kind == "image" and model.domain == (-1.0, 1.0) and not model.G.training
    g = lambda: torch.Generator().manual_seed(5)                    # noqa: E731
    both = model.estimate_log_zeta(24, generator=g(), batch_size=24, logdet="both", chunk=200, keep_log_weights=True)
    exact = model.estimate_log_zeta(24, generator=g(), batch_size=24, chunk=300)   # one batch: the same u
    assert exact.log_zeta == pytest.approx(both["exact"].log_zeta, abs=1e-3)    # the same samples: the same estimate
    assert both["exact"].logdet == "exact" and both["jvp1"].logdet == "jvp1"
    assert both["exact"].log_zeta != both["jvp1"].log_zeta and 1 <= both["jvp1"].ess <= 24
    assert len(both["exact"].log_weights) == 24
    gauss = model.estimate_log_zeta(200, "gaussian", generator=g())
    assert math.isfinite(gauss.log_zeta) and gauss.proposal == "gaussian" and gauss.logdet is None


def test_importance_sampling_from_the_base_measure_weighs_by_the_network_part_alone(tmp_path, fashion_root):
    """proposal="base" draws p_0 itself, so log w = f/w: under the bounded head (f = -½‖h‖² <= 0) every
    weight is in (0, 1], and with h ≡ 0 every weight is 1 and log ζ̂ = 0, which holds only if the
    proposal's density (log p_0(u) - Σ log(1 - tanh² u), the change of variables) is D's own base."""
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), d_base="gaussian", d_quadratic=4, **TINY), progress=False)
    model = owf.load(run)
    est = model.estimate_log_zeta(500, "base", 250, torch.Generator().manual_seed(0), keep_log_weights=True)
    assert est.proposal == "base" and len(est.log_weights) == 500
    # D is float32 with w log p_0 of thousands of nats in it: its rounding, divided by w = 0.01, is up to ~0.01
    assert est.log_weights.max() <= 0.05 and est.log_zeta <= 0 and 1 <= est.ess <= 500
    # AIS with elliptical slice transitions anneals in the tilt f/w alone (D.tilt): where importance sampling from
    # p_0 with those weights is reliable (ESS in the thousands of 20,000), the two agree
    z = model.base_density().sample64(20_000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = model.D.tilt(torch.tanh(z).float().view(-1, 1, 28, 28)).double() / model.w
    sliced = model.estimate_log_zeta(64, "ais-slice", steps=200, generator=torch.Generator().manual_seed(1))
    assert abs(sliced.log_zeta - (float(torch.logsumexp(f, 0)) - math.log(len(f)))) < 0.05 and sliced.ess > 50
    assert sliced.proposal == "ais-slice" and sliced.component_ess[0] == pytest.approx(sliced.ess)
    assert sliced.samples.shape == (64, 1, 28, 28) and torch.logsumexp(sliced.log_weights, 0) == pytest.approx(sliced.log_zeta)
    assert "samples" not in sliced.to_dict() and "log_weights" not in sliced.to_dict()
    head = model.D.net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        model.D.base_mu += 0.3         # p_0 no longer the data's Gaussian fit: the proposal must be D's own base
    flat = model.estimate_log_zeta(500, "base", 250, torch.Generator().manual_seed(0), keep_log_weights=True)
    assert flat.log_weights.abs().max() < 0.05 and abs(flat.log_zeta) < 1e-3 and flat.ess == pytest.approx(500, rel=1e-3)
    none = tmp_path / "n"
    train(Config(out=str(none), data_root=str(fashion_root), d_base="none", **{**TINY, "steps": 1}), progress=False)
    with pytest.raises(ValueError, match="proposal 'base': this energy has no base measure .d_base='none'"):
        owf.load(none).estimate_log_zeta(10, "base")


class StandIn(nn.Module):
    """A small stand-in for Inception-v3: 3-channel images -> 6 features."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 6))

    def forward(self, x):
        return self.net(x)


def test_inception_fid_reads_its_weights_file_and_names_a_bad_one(tmp_path):
    torch.manual_seed(0)
    torch.save(StandIn().state_dict(), tmp_path / "w.pt")
    real = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    fake_close = real.float() / 127.5 - 1 + 0.01 * torch.randn(64, 1, 16, 16)
    fake_far = torch.rand(64, 1, 16, 16) * 0.2 - 1
    near = inception_fid(fake_close, real, tmp_path / "w.pt", network=StandIn)
    far = inception_fid(fake_far, real, tmp_path / "w.pt", network=StandIn)
    assert 0 <= near < far
    with pytest.raises(FileNotFoundError, match=r"--fid-weights .*nope.pt: no such file"):
        inception_fid(fake_far, real, tmp_path / "nope.pt", network=StandIn)
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"--fid-weights .*bad.pt is not a compatible weights file"):
        inception_fid(fake_far, real, tmp_path / "bad.pt", network=StandIn)


def test_evaluate_writes_eval_json_and_every_figure(tmp_path, fashion_root, capsys, monkeypatch):
    monkeypatch.setattr(image_eval, "GAUSSIAN_SAMPLES", 4000)     # of 100,000: 200,000 draws took minutes under load
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), **TINY), progress=False)
    args = [str(run), "--zeta-samples", "40", "--batch-size", "8", "--chunk", "400", "--ais-steps", "8",
            "--ais-chains", "8", "--raise-points", "4", "--slice-steps", "6", "--slice-chains", "20"]
    # first stopped in the bracket (a KeyboardInterrupt, as Ctrl-C): eval.partial.json keeps the stages before it
    bracket = image_eval.likelihood_bracket

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(image_eval, "likelihood_bracket", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate_main(args)
    assert not (run / "eval.json").exists()
    part = json.loads((run / image_eval.PARTIAL).read_text())
    assert "ais_log_zeta" not in part and "test_bits_per_dim" not in part          # the bracket did not finish
    monkeypatch.setattr(image_eval, "likelihood_bracket", bracket)
    assert evaluate_main(args) == 0
    res = json.loads((run / "eval.json").read_text())
    # the partial stages are the finished evaluation's, number for number, and the partial file is gone
    keys = ("log_zeta_is", "ess_is", "log_zeta_jvp1", "log_zeta_gaussian", "log_zeta_base", "log_zeta_ais_slice",
            "ais_slice_replicate_log_zetas", "ais_slice_component_masses", "test_bits_per_dim_rebalanced")
    assert {k: part[k] for k in keys} == {k: res[k] for k in keys} and part["baselines"] == res["baselines"]
    assert not (run / image_eval.PARTIAL).exists()
    for k in ("log_zeta", "log_zeta_is", "log_zeta_is_se", "ess_is", "log_zeta_jvp1", "log_zeta_jvp1_se", "ess_jvp1",
              "log_zeta_gaussian", "log_zeta_base", "ess_base", "ais_log_zeta", "test_bits_per_dim_ais", "test_bits_per_dim_raise", "bracket_gap_bpd",
              "ais_bases_spread_bpd", "test_nll_nats", "test_bits_per_dim", "test_bits_per_dim_se",
              "energy_auc_train_vs_test", "seconds_per_exact_sample", "exact_samples_in_30_min"):
        assert k in res and math.isfinite(res[k]), k
    for k in ("histogram_bits_per_dim", "atanh_gaussian_bits_per_dim", "lzma_bits_per_dim", "png_bits_per_dim"):
        assert math.isfinite(res["baselines"][k]), k
    # the ladder: K = 8 and its halvings, for each default base (the defaults' copula: p_0 itself), each row
    # with its diagnostics
    assert sorted({(r["base"], r["steps"]) for r in res["ais_rows"]}) == sorted(
        (b, K) for b in ("defensive", "base") for K in (1, 2, 4, 8))
    assert all((0 <= r["accept"] <= 1 or r["steps"] == 1 and math.isnan(r["accept"])) and r["num_samples"] == 8
               and "raise_bits_per_dim" in r for r in res["ais_rows"])      # K = 1 makes no transition
    assert 0 <= res["energy_auc_train_vs_test"] <= 1
    assert set(res["zeta_convergence"]) == {"generator (Eq. 10, exact)", "generator (Eq. 9, jvp1)",
                                            "Gaussian fitted to the data", "the base measure p_0"}
    for f in ("ais_convergence.png", "zeta_convergence.png", "energy_hist.png", "samples_by_energy.png",
              "interpolation.png", "same_z.png"):
        assert (run / f).stat().st_size > 0, f
    # the NLL is AIS's (the largest AIS log ζ̂ at the largest K); the checkpoint keeps the largest of the
    # lower bounds for log_prob, whose NLL is then test_bits_per_dim_largest_zeta
    assert res["log_zeta"] == res["ais_log_zeta"]
    assert res["test_bits_per_dim"] == pytest.approx(res["test_bits_per_dim_ais"], abs=1e-9)
    found = {"ais": res["ais_log_zeta"], "is_generator": res["log_zeta_is"], "is_base": res["log_zeta_base"],
             "ais_slice": res["log_zeta_ais_slice"]}
    assert res["log_zeta_largest"] == found[res["log_zeta_largest_from"]] == max(found.values())
    model = owf.load(run)
    assert model.zeta.log_zeta == res["log_zeta_largest"]
    assert model.zeta.proposal == {"ais": "ais", "is_generator": "generator", "is_base": "base",
                                   "ais_slice": "ais-slice"}[res["log_zeta_largest_from"]]
    # slice AIS from p_0's 10 components, 2 chains each, twice on fresh streams
    sl = res["ais_slice_replicate_log_zetas"]
    assert len(sl) == 2 and sl[0] == res["log_zeta_ais_slice"] != sl[1] and len(res["ais_slice_component_ess"]) == 10
    assert res["ais_slice_steps"] == 6 and res["ais_slice_chains"] == 20
    test_u8, _ = load_images("fashion-mnist", str(fashion_root), train=False)
    assert heldout_nll(model, test_u8)["test_bits_per_dim"] == pytest.approx(res["test_bits_per_dim_largest_zeta"], abs=1e-9)
    masses = torch.softmax(model.D.base_log_pi.double() + torch.tensor(res["ais_slice_component_log_zetas"], dtype=torch.float64), 0)
    torch.testing.assert_close(torch.tensor(res["ais_slice_component_masses"], dtype=torch.float64), masses)
    # the rebalanced energy's NLL is rebalance_base's with the first replicate's components (the checkpoint's D is not)
    from owf.density import SliceAISEstimate
    est = SliceAISEstimate(res["log_zeta_ais_slice"], 0.0, 1.0, 20, "ais-slice", False, chains_per_component=2,
                           component_log_zetas=res["ais_slice_component_log_zetas"],
                           component_ess=res["ais_slice_component_ess"])
    balanced = owf.load(run).rebalance_base(est)
    assert heldout_nll(balanced, test_u8)["test_bits_per_dim"] == pytest.approx(res["test_bits_per_dim_rebalanced"], abs=1e-9)
    assert res["is_above_ais_nats"] == pytest.approx(max(res["log_zeta_is"], res["log_zeta_base"], res["log_zeta_ais_slice"])
                                                     - res["ais_log_zeta"])
    assert res["test_bits_per_dim_largest_zeta"] - res["test_bits_per_dim"] == pytest.approx(
        (res["log_zeta_largest"] - res["ais_log_zeta"]) / (784 * math.log(2)), abs=1e-9)
    # the best base's top rung run twice, fresh chains: their spread is the error bar, the first the estimate
    lz = res["ais_replicate_log_zetas"]
    assert len(lz) == 2 and lz[0] == res["ais_log_zeta"] and lz[1] != lz[0]
    assert res["ais_log_zeta_replicate_sd"] == pytest.approx(abs(lz[1] - lz[0]) / math.sqrt(2))
    # and the error bar is the images' spread with the replicates' sd, not with the weights' se
    by_weights = heldout_nll(model, test_u8)["test_nll_se"]           # hypot(images, the cached estimate's se)
    images_var = by_weights ** 2 - model.zeta.se ** 2
    assert res["test_nll_se"] ** 2 == pytest.approx(images_var + res["ais_log_zeta_replicate_sd"] ** 2, rel=1e-6)
    # converged as the summary's numbers say, and a warning when not
    assert res["converged"] == (res["ais_doubling_move_bpd"] < 0.05 and res["raise_doubling_move_bpd"] < 0.05
                                and abs(res["bracket_gap_bpd"]) < 0.05)
    assert ("has not converged" in res.get("warning", "")) == (not res["converged"])
    # the trend of the best base's ladder, and the K it says convergence needs
    assert len(res["ais_trend"]["moves"]) == len(res["raise_trend"]["moves"]) == 3
    needed = [res["ais_trend"]["k_needed"], res["raise_trend"]["k_needed"]]
    assert res["k_to_converge"] == (None if None in needed else max(needed))
    # importance sampling's ESS below 1% of S is flagged in eval.json and warned
    assert res["low_ess_is"] == (res["ess_is"] < 0.4)
    err = capsys.readouterr().err
    assert ("log ζ estimate (generator, exact) with ESS" in err) == res["low_ess_is"]


@pytest.mark.parametrize("d_base,g_output", [("mixture", "tanh"), ("copula", "tanh"), ("copula", "margins")])
def test_a_mixture_base_run_is_evaluated_against_its_own_base(tmp_path, fashion_root, monkeypatch, d_base, g_output):
    """--d-base mixture: eval.json's baselines carry the mixture p_0's own test bits/dim (the energy
    read against the density it corrects); AIS can start from p_0 ("base"), and the defensive base
    is ½ p_0 + ½ uniform (copula: ½ p_0 + ½ the histogram, in its normal scores). G has latent
    components matched to it (--g-mixture), with their weights π; with --g-output margins its output
    map reads p_0's margins, and the evaluation's log q (exact and Eq. 9's, owf_kernels.jvp through σ) runs."""
    monkeypatch.setattr(image_eval, "GAUSSIAN_SAMPLES", 4000)
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), d_base=d_base, g_mixture=True, g_output=g_output, **TINY),
          progress=False)
    with pytest.raises(ValueError, match="--slice-chains 15: give a positive multiple of the base's 10 components"):
        evaluate_run(str(run), slice_chains=15)            # refused before any work
    assert evaluate_main([str(run), "--zeta-samples", "8", "--batch-size", "8", "--chunk", "400", "--ais-steps", "4",
                          "--ais-chains", "8", "--raise-points", "4", "--no-figures", "--slice-steps", "2",
                          "--slice-chains", "10"]) == 0   # default bases
    res = json.loads((run / "eval.json").read_text())
    model = owf.load(run)
    p0 = model.base_density()
    assert len(p0.log_pi) == 10 and model.ais_base("defensive").components[0] is model.ais_base("base")
    test_u8, _ = load_images("fashion-mnist", str(fashion_root), train=False)
    from owf.baselines import bits_per_dim, dequantised_u
    if d_base == "copula":           # p_0 of its normal scores z: log p_x = log p(z) - log|dx/dz|, z of the same draws
        coord = p0.coordinate
        assert model.ais_base("defensive").components[1].coordinate is model.ais_base("base").coordinate
        nll = torch.cat([-(p0.log_prob(z) - coord.log_jac(z)) for z in
                         (coord.to_u(torch.tanh(dequantised_u(b, torch.Generator().manual_seed(i))[0]))
                          for i, b in enumerate(test_u8.split(2000)))])
    else:
        nll = torch.cat([-(p0.log_prob(u) - jac) for u, jac in
                         (dequantised_u(b, torch.Generator().manual_seed(i)) for i, b in enumerate(test_u8.split(2000)))])
    assert res["baselines"]["base_measure_bits_per_dim"] == pytest.approx(bits_per_dim(nll, 784),
                                                                          abs=1e-9 if d_base == "mixture" else 1e-6)
    assert {r["base"] for r in res["ais_rows"]} == {"base", "defensive"}
    assert math.isfinite(res["test_bits_per_dim"]) and model.G.components == 10 and res["base_samples"] == 4000
    torch.testing.assert_close(model.G.latent_log_pi, p0.log_pi.float())
    if g_output == "margins":
        assert torch.equal(model.G.net[-1].log_p_bin, p0.log_p_bin)
        assert math.isfinite(res["log_zeta_is"]) and math.isfinite(res["log_zeta_jvp1"])


def test_rebalance_base_gives_each_component_its_base_weight_and_stays_normalised(tmp_path, fashion_root):
    """P' = e^{f/w} Σ_k π_k N_k / ζ̂_k through D's own log_prob once its base weights are π'_k ∝ π_k / ζ̂_k; importance
    sampling from the rebalanced p_0 (reliable on this tiny D) finds its normaliser ζ' = 1 / Σ_k π_k / ζ̂_k."""
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), d_base="copula", d_quadratic=4, **TINY), progress=False)
    model = owf.load(run)
    D = model.D
    est = model.estimate_log_zeta(200, "ais-slice", steps=100, generator=torch.Generator().manual_seed(0))
    test_u8, _ = load_images("fashion-mnist", str(fashion_root), train=False)
    x = dequantise(test_u8[:50], torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        lj = D.log_base_components(x)                                   # log π_k p_0,k(x)
        expected = D.tilt(x).double() / model.w + torch.logsumexp(lj - torch.tensor(est.component_log_zetas), 1)
    log_pi = D.base_log_pi.clone()
    model.rebalance_base(est)
    masses = torch.softmax(D.base_log_pi + torch.tensor(est.component_log_zetas), 0)     # π'_k ζ̂_k / ζ'
    torch.testing.assert_close(masses, log_pi.exp())
    torch.testing.assert_close(model.log_prob(x).double(), expected, rtol=1e-6, atol=1e-3)   # D is float32 (|D/w| ~ 10^5)
    is_base = model.estimate_log_zeta(20_000, "base", 5000, torch.Generator().manual_seed(2))
    assert is_base.ess > 1000 and abs(is_base.log_zeta - model.zeta.log_zeta) < 0.1, (is_base.log_zeta, model.zeta.log_zeta)
    assert model.zeta.log_zeta == pytest.approx(-float(torch.logsumexp(log_pi - torch.tensor(est.component_log_zetas), 0)))
    with pytest.raises(ValueError, match="already rebalanced"):
        model.rebalance_base(est)


def test_every_sampler_of_a_copula_base_moves_in_its_normal_scores(tmp_path, fashion_root):
    """P_D = p_0 (--d-base copula, D's linear head zeroed, so f = 0 and log ζ = 0): importance sampling
    from p_0 and AIS from p_0 give log ζ̂ = 0, AIS from the defensive base about 0, RAISE gives log p_0 of each
    test image, and p_0's draws for --zeta-proposal base and the persistent chains' images keep the
    histogram's margins: each reads x through the base's coordinate (x = tanh z would be mid-grey)."""
    from owf.negatives import PersistentChains
    from owf.tasks import ImageTask
    run = tmp_path / "r"
    cfg = Config(out=str(run), data_root=str(fashion_root), d_base="copula", d_quadratic=0, **dict(TINY, steps=1))
    train(cfg, progress=False)
    model = owf.load(run)
    with torch.no_grad():
        model.D.net[-1].weight.zero_()
    g = torch.Generator().manual_seed(0)
    assert abs(model.estimate_log_zeta(2000, "base", 1000, g).log_zeta) < 1e-3
    # from p_0 every increment is 0; from ½ p_0 + ½ the histogram an unbiased estimate of ζ = 1 (0.12 ± 0.22 here;
    # in the wrong coordinate it is hundreds of nats off)
    for base, tol in (("base", 1e-3), ("defensive", 1.0)):
        est = model.estimate_log_zeta(16, "ais", steps=20, base=base, pilot_steps=20, generator=g)
        assert abs(est.log_zeta) < tol, (base, est.log_zeta, est.se)
    # slice AIS anneals in f/w alone, 0 here: every weight is 1 (its chains read x through the normal scores too)
    sliced = model.estimate_log_zeta(20, "ais-slice", steps=5, generator=g)
    assert sliced.log_zeta == 0 and sliced.component_ess == [2.0] * 10 and sliced.chains_per_component == 2
    with pytest.raises(ValueError, match="num_samples=15 must be a multiple of the base's 10 components"):
        model.estimate_log_zeta(15, "ais-slice", steps=5)
    test_u8, _ = load_images("fashion-mnist", str(fashion_root), train=False)
    x = dequantise(test_u8[:3], torch.Generator().manual_seed(1))
    rev = model.raise_log_prob(x, steps=10, base="base", pilot_steps=20, generator=g)
    torch.testing.assert_close(rev.log_prob, model.D.log_base(x), rtol=1e-6, atol=0)     # the chains read float32 x
    hist = model.ais_base("histogram")
    black = float(hist.log_p_bin.exp()[:, 0].mean())          # the histograms' mean share of bin 0
    task = ImageTask(cfg, progress=False)
    task.networks(cfg, saved_d=model.D.state_dict())
    chains = PersistentChains(64, (1, 28, 28), model.ais_base("defensive"), seed=2)
    for images in (task.base_samples(256, torch.Generator().manual_seed(3), x), chains.step(model.D, model.w)):
        share = float(((images + 1) * 128).floor().eq(0).double().mean())
        assert abs(share - black) < 0.05, (share, black)


def test_evaluate_bad_input(tmp_path, fashion_root, capsys):
    (tmp_path / "empty").mkdir()
    assert evaluate_main([str(tmp_path / "empty")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    run = tmp_path / "r"
    train(Config(out=str(run), data_root=str(fashion_root), **TINY), progress=False)
    assert evaluate_main([str(run), "--zeta-samples", "8", "--batch-size", "8", "--no-figures",
                          "--fid-weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_the_exact_log_det_survives_a_saturated_tanh():
    """A generator whose output pixels sit at tanh's ±1: in float32 1 - y² is exactly 0 there and
    slogdet of the full Jacobian is -inf; split as log|det J_h| + Σ log(1 - tanh² a) it stays finite,
    and agrees with float64 autograd (where those slopes are e^-60, not 0)."""
    torch.manual_seed(0)
    G = DCGANFlow((1, 4, 4), widths=(16,), latent=4)
    with torch.no_grad():
        G.net[-2].bias.fill_(15.0)                    # pre-activations around 15-30: tanh = 1 in float32
    G.eval()
    u = G.noise(3)
    y, ld = G.logdet(u, "exact")
    assert torch.isfinite(ld).all() and (y == 1).any()
    full = torch.stack([torch.autograd.functional.jacobian(lambda v: G.net(v.unsqueeze(0)).flatten(), ub) for ub in u])
    assert torch.isinf(torch.linalg.slogdet(full.double()).logabsdet).any()      # the naive way in float32
    G64 = copy.deepcopy(G).double()
    want = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: G64.net(v.unsqueeze(0)).flatten(), ub)).logabsdet for ub in u.double()])
    torch.testing.assert_close(ld.double(), want, rtol=1e-4, atol=1e-2)


def test_the_energy_auc_reads_ranks_whatever_the_energies_scale(tmp_path):
    """Energies near -220 (a trained model's): torchmetrics would read them as logits, all 0 after
    a sigmoid, and report 0.5; the AUC must see that the training images score higher."""
    from owf.image_eval import energy_auc

    class Stub:
        config = type("C", (), {"data": "toy"})()

        def energy(self, x):
            return -220.0 + x.flatten(1).mean(1).double()          # brighter images: higher energy
    train = torch.full((50, 1, 4, 4), 200, dtype=torch.uint8)
    test = torch.randint(0, 100, (50, 1, 4, 4), dtype=torch.uint8)
    res = energy_auc(Stub(), train, test, tmp_path / "e.png")
    assert res["energy_auc_train_vs_test"] == pytest.approx(1.0)


def test_the_largest_lower_bound_of_log_zeta_moves_the_nll_and_warns_when_ais_lags():
    """Each estimate of log ζ is a lower bound in expectation: the largest is taken, the NLL moves by
    Δ/(n ln 2), and importance sampling more than IS_ABOVE_AIS_NATS above AIS is a warning."""
    from owf.image_eval import IS_ABOVE_AIS_NATS, largest_log_zeta
    res = dict(ais_log_zeta=-30.0, log_zeta_is=-35.0, log_zeta_base=-22.0, test_bits_per_dim=3.65)
    out = largest_log_zeta(res, 784)
    assert (out["log_zeta_largest"], out["log_zeta_largest_from"], out["is_above_ais_nats"]) == (-22.0, "is_base", 8.0)
    assert out["test_bits_per_dim_largest_zeta"] == pytest.approx(3.65 + 8 / (784 * math.log(2)), abs=1e-12)
    assert "8.0 nats above AIS's -30.00" in out["warning_log_zeta"] and "3.665 bits/dim" in out["warning_log_zeta"]
    close = largest_log_zeta(dict(res, log_zeta_base=-30.0 + IS_ABOVE_AIS_NATS / 2), 784)
    assert "warning_log_zeta" not in close and close["log_zeta_largest_from"] == "is_base"
    behind = largest_log_zeta(dict(ais_log_zeta=-30.0, log_zeta_is=-40.0, test_bits_per_dim=3.65), 784)  # no base
    assert (behind["log_zeta_largest_from"], behind["is_above_ais_nats"]) == ("ais", -10.0)
    assert behind["test_bits_per_dim_largest_zeta"] == 3.65 and "warning_log_zeta" not in behind


def test_the_convergence_trend_extrapolates_a_geometric_ladder():
    """v_j = L - c r^j on K = 250·2^j: the fitted ratio is r, the limit L, and k_needed the first
    rung whose move c r^(j-1)(1 - r) is below the tolerance; moves that do not shrink give none."""
    from owf.image_eval import convergence_trend
    L, c, r = 6.0, 2.0, 0.6
    ks = [250 * 2 ** j for j in range(6)]
    t = convergence_trend(ks, [L - c * r ** j for j in range(6)], tol=0.05)
    assert t["ratio"] == pytest.approx(r) and t["limit"] == pytest.approx(L)
    j = next(j for j in range(1, 40) if c * r ** (j - 1) * (1 - r) < 0.05)
    assert t["k_needed"] == 250 * 2 ** j
    up = convergence_trend(ks, [1.0 + 0.1 * j * j for j in range(6)])
    assert up["ratio"] > 1 and up["k_needed"] is None and up["limit"] is None
    done = convergence_trend(ks, [3.0, 3.2, 3.21, 3.2101, 3.21, 3.2101])
    assert done["k_needed"] == ks[-1] and done["limit"] == 3.2101
    assert convergence_trend([8], [1.0])["k_needed"] is None
