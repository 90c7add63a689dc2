"""Images: the loaders on files the tests write, the DCGAN one-way flow's log q against the full
Jacobian, the no-bottleneck check, exact resume, a short run that lowers the classifier FID, and
bad input."""
import copy
import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from owf.config import Config
from owf.dcgan import BASE_CLAMP, ConvEnergy, DCGANFlow
from owf.images import ImageStream, load_images, saturated_share, to_unit
from owf.model import log_normal
from owf.train import main, train
from support import CLASSES, toy_images

def test_fashion_mnist_reads_the_idx_files(fashion_root):
    x, y = load_images("fashion-mnist", str(fashion_root), train=True)
    xt, yt = load_images("fashion-mnist", str(fashion_root), train=False)
    want, wy = toy_images(600, seed=1)
    assert x.shape == (600, 1, 28, 28) and x.dtype == torch.uint8 and xt.shape == (200, 1, 28, 28)
    assert torch.equal(x, torch.from_numpy(want)) and torch.equal(y, torch.from_numpy(wy).long())
    assert to_unit(x).min() >= -1 and to_unit(x).max() <= 1


def test_cifar10_format(tmp_path, monkeypatch):
    import torchvision
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [n for n, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list]
    for name in names:
        data = rng.integers(0, 256, (5, 3 * 32 * 32)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(range(5))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # the files the test writes are not the real ones: torchvision's md5 checks are turned off
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(torchvision.datasets.CIFAR10, attr,
                            [[n, None] for n, _ in getattr(torchvision.datasets.CIFAR10, attr)])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", dict(torchvision.datasets.CIFAR10.meta, md5=None))
    x, y = load_images("cifar10", str(tmp_path), train=True)
    assert x.shape == (25, 3, 32, 32) and y.tolist() == list(range(5)) * 5
    first = pickle.load(open(folder / "data_batch_1", "rb"))["data"][0].reshape(3, 32, 32)
    assert torch.equal(x[0], torch.from_numpy(first))


def test_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(
            tmp_path / "a" / ("deeper" if i % 2 else "") / f"{i}.png")
    x, y = load_images("folder", str(tmp_path / "a"), train=True)
    xt, _ = load_images("folder", str(tmp_path / "a"), train=False)
    assert x.shape == (18, 3, 8, 8) and xt.shape == (2, 3, 8, 8) and y is None
    assert len({t.numpy().tobytes() for t in torch.cat([x, xt])}) == 20          # a split, not a copy


def test_bad_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OWF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="--data-root .*nowhere does not exist"):
        load_images("fashion-mnist", str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks the Fashion-MNIST files"):
        load_images("fashion-mnist", str(tmp_path / "half"))
    import owf.images as I
    monkeypatch.setattr(I, "FASHION_MNIST_PACKAGE", "no-such-package-here")
    with pytest.raises(FileNotFoundError, match="install it with `apt-get install no-such-package-here`"):
        load_images("fashion-mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        load_images("folder", str(tmp_path / "empty"))
    from PIL import Image
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match=r"images of one size: .*a.png is 8x8x3, .*b.png is 9x8x3"):
        load_images("folder", str(tmp_path / "mixed"))
    with pytest.raises(ValueError, match="--data cifar10 reads from --data-root DIR"):
        load_images("cifar10", "")


def test_download_without_network_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network here")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ValueError, match=r"--download of cifar10 into .* failed .*no network here.*--data-root"):
        load_images("cifar10", str(tmp_path / "c"), download=True)
    p = main(["--data", "cifar10", "--data-root", str(tmp_path / "c"), "--out", str(tmp_path / "r")])
    assert p == 2                                              # no download asked: a missing root, named


def test_the_stream_is_seeded_per_epoch_and_resumes():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    a = ImageStream(images, seed=3)
    seen = torch.cat([a.next(4, "cpu") for _ in range(5)])         # 20 = two epochs
    values = ((seen.flatten() + 1) * 127.5).round().long()
    assert sorted(values[:10].tolist()) == list(range(10)) == sorted(values[10:].tolist())
    assert values[:10].tolist() != values[10:].tolist()              # a new permutation per epoch
    b = ImageStream(images, seed=3)
    b.next(7, "cpu")
    c = ImageStream(images, seed=3)
    c.load_state_dict(b.state_dict())
    assert torch.equal(b.next(9, "cpu"), c.next(9, "cpu"))


def test_the_generators_log_q_is_eq10_with_the_full_jacobian():
    """log q = log N(u) - log|det J| with J each sample's own Jacobian (per-sample BatchNorm): against
    torch.autograd.functional.jacobian of an eval-mode copy holding the batch's statistics, at n = 16."""
    torch.manual_seed(0)
    G = DCGANFlow((1, 4, 4), widths=(16,), latent=4).double()
    u = G.noise(6)
    y, ld = G.logdet(u, "exact")
    ev = copy.deepcopy(G).eval()
    with torch.no_grad():
        a = G.net[1](G.net[0](u))
        bn = ev.net[2]
        bn.running_mean.copy_(a.mean((0, 2, 3)))
        bn.running_var.copy_(a.var((0, 2, 3), unbiased=False))
    want = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: ev.net(v.unsqueeze(0)).flatten(), u[b])).logabsdet for b in range(6)])
    torch.testing.assert_close(ld, want)
    assert y.shape == (6, 1, 4, 4)
    _, log_q, ld2 = G.sample_with_log_prob(6, "exact", torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, log_normal(G.noise(6, torch.Generator().manual_seed(1))) - ld2)
    assert G.d == 4 and G.n == 16


def test_no_bottleneck_is_checked_and_names_the_layer():
    with pytest.raises(ValueError, match=r"layer 0 \(Linear.*\) outputs \(392,\) = 392 numbers per sample, fewer "
                                         r"than n = 784"):
        DCGANFlow((1, 28, 28), widths=(8, 4))
    with pytest.raises(ValueError, match=r"layer 4 \(ConvTranspose2d.*\) outputs \(2, 14, 14\) = 392"):
        DCGANFlow((1, 28, 28), widths=(16, 2))
    with pytest.raises(ValueError, match="generator activation 'relu'"):
        DCGANFlow((1, 28, 28), activation="relu")
    DCGANFlow((1, 28, 28), widths=(16, 4))                                  # the narrowest that passes
    D = ConvEnergy((3, 32, 32), widths=(8, 16), quadratic=5)
    assert D(torch.randn(2, 3, 32, 32)).shape == (2,) and not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())


TINY_IMAGES = dict(g_hidden="16,4", d_hidden="4,8", batch=16, samples=16, log_every=5, fid_every=0,
                   sample_every=10 ** 6, ckpt_every=5, device="cpu", threads=1, catch_up=0)


@pytest.mark.parametrize("loss,extra", [("owf", {}), ("owf", {"entropy_samples": 1}), ("owf", {"d_base": "mixture"}),
                                        ("owf", {"d_base": "mixture", "g_mixture": True}), ("wgan-gp", {}),
                                        ("owf", {"zeta_proposal": "base"}),          # p_0's draws from training's stream
                                        ("owf", {"d_base": "mixture", "g_mixture": True, "zeta_proposal": "base",
                                                 "mcmc_chains": 0, "mcmc_weight": 0.0}),
                                        ("owf", {"d_base": "copula", "g_mixture": True}),
                                        ("owf", {"d_base": "copula", "g_mixture": True, "g_output": "margins"}),
                                        ("owf", {"d_base": "copula", "g_mixture": True, "g_output": "margins",
                                                 "entropy_samples": 2}),
                                        ("owf", {"d_base": "copula", "g_base": True, "g_output": "margins",
                                                 "entropy_samples": 2, "catch_up": 5})])   # resumed across the phase's start
def test_an_image_run_resumes_exactly(tmp_path, fashion_root, monkeypatch, loss, extra):
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), steps=20, loss=loss, **extra)
    train(Config(out=str(tmp_path / "full"), **kw), progress=False)
    m = train(Config(out=str(tmp_path / "half"), until=10, **kw), progress=False)
    assert m["steps"] == 10 and not m["finished"]
    import owf.baselines

    def no_refit(*a, **k):
        raise AssertionError("a resume fitted the base measure again; it is in the checkpoint")
    monkeypatch.setattr(owf.baselines.GaussianMixtureBase, "fit", no_refit)
    train(resume=str(tmp_path / "half"), progress=False)
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("full", "half"))
    for k in ("G", "D"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name}"
    drawn = (20 + extra.get("catch_up", 0)) * 16 * (5 if loss == "wgan-gp" else 1)    # steps x batch x critic steps
    assert a["task"]["stream"] == b["task"]["stream"] == {"epoch": drawn // 600, "pos": drawn % 600}
    if loss == "owf" and extra.get("mcmc_chains") != 0:    # the default's persistent chains (owf.negatives) resume with the run
        assert torch.equal(a["task"]["chains"]["u"], b["task"]["chains"]["u"]) and a["task"]["chains"]["steps"] == 20
    else:
        assert "chains" not in a["task"]
    assert (tmp_path / "half" / "samples.png").stat().st_size > 0 and (tmp_path / "half" / "curves.png").exists()
    if extra.get("g_output") == "margins":    # G's output map reads D's margins; the probe counts clamped pixels
        (margins,) = [v for name, v in a["G"].items() if name.endswith("log_p_bin")]
        assert torch.equal(margins, a["D"]["base_log_p_bin"]) and not torch.equal(margins, torch.full_like(margins, margins[0, 0]))
        row = json.loads(open(tmp_path / "full" / "metrics.jsonl").readlines()[-1])
        assert 0 <= row["clamped"] <= 1 and "saturated" not in row
    if "base_L" in a["G"]:      # --g-base: G's latent is D's fitted mixture, saved once (they share a storage when loaded)
        for g_name, d_name in (("base_L", "base_L"), ("base_mu", "base_mu"), ("net.1.log_p_bin", "base_log_p_bin")):
            assert a["G"][g_name].untyped_storage().data_ptr() == a["D"][d_name].untyped_storage().data_ptr(), g_name


def test_a_short_image_run_lowers_the_classifier_fid(tmp_path, fashion_root):
    """The classifier (trained here on the toy set) scores the untrained generator and the trained
    one: the FID falls, and metrics.json carries it with the class shares and the floor."""
    from owf.classifier import load_classifier, train_classifier
    record = train_classifier("fashion-mnist", str(fashion_root), epochs=2, progress=False)
    assert record["test_accuracy"] > 0.8 and record["fid_floor"] < 5
    assert load_classifier("fashion-mnist").test_accuracy == record["test_accuracy"]
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), g_hidden="32,16", d_hidden="16,32",
              steps=150, lr_d=5e-4, lr_g=5e-4, log_every=50, fid_every=50, fid_samples=400, ckpt_every=10 ** 6,
              d_base="gaussian", d_quadratic=0, mcmc_weight=0.2)   # a G from a random network (not from the base)
    m = train(Config(out=str(tmp_path / "r"), **kw), progress=False)
    rows = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl")]
    fids = [r["fid"] for r in rows if "fid" in r]
    untrained = train(Config(out=str(tmp_path / "u"), **dict(kw, steps=1, log_every=1)), progress=False)["fid"]
    # seeds 0, 1, 2 of this run end at 0.64, 0.69 and 0.55 of the untrained FID (AMD EPYC VM): a
    # trajectory is chaotic in the BLAS rounding, so another CPU is another draw; an untrained
    # generator stays at 1 within the 400-sample noise of a few percent
    assert len(fids) == 3 and m["fid"] == fids[-1] < 0.85 * untrained, (untrained, fids)
    assert len(m["class_shares"]) == CLASSES and abs(sum(m["class_shares"]) - 1) < 1e-3
    assert m["fid_floor"] == record["fid_floor"] and m["min_class_share"] == pytest.approx(min(m["class_shares"]), abs=1e-4)


# ---- training for likelihood: dequantised data, the exact tanh term, the base measure, the probe

def test_the_stream_dequantises_within_each_bin_when_given_a_generator():
    u8 = torch.randint(0, 256, (40, 1, 5, 5), dtype=torch.uint8)
    plain = ImageStream(u8, seed=3).next(40, "cpu")
    deq = ImageStream(u8, seed=3).next(40, "cpu", torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, to_unit(u8[ImageStream(u8, seed=3)._perm[:40]]))
    bins = ((deq + 1) * 128).floor()                   # x = (u8 + U)/128 - 1: U in [0, 1) keeps each pixel in its bin
    assert torch.equal(bins.to(torch.uint8), u8[ImageStream(u8, seed=3)._perm[:40]])
    again = ImageStream(u8, seed=3).next(40, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(deq, again) and not torch.equal(deq, plain)


def test_jvp1_tanh_is_eq9_for_h_plus_the_exact_tanh_term():
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 8), latent=10).double().eval()
    u = G.noise(3, torch.Generator().manual_seed(1))
    y, ld = G.logdet(u, "jvp1-tanh", torch.Generator().manual_seed(2))
    v = torch.randn(3, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    h = G.net[:-1]
    a, a_dot = torch.func.jvp(h, (u,), (v,))
    expected = a_dot.flatten(1).norm(dim=1).log() + torch.log(1 - torch.tanh(a.flatten(1)) ** 2).sum(1)
    torch.testing.assert_close(ld, expected)
    torch.testing.assert_close(y, G(u))
    # with every direction (the exact log-det) the tanh term is the same one
    _, exact = G.logdet(u, "exact")
    J = torch.func.jacrev(lambda w: h(w[None]).flatten())
    ld_h = torch.stack([torch.linalg.slogdet(J(ui)).logabsdet for ui in u])
    torch.testing.assert_close(exact, ld_h + torch.log(1 - torch.tanh(a.flatten(1)) ** 2).sum(1))


def test_the_margins_output_is_exact_in_eq10_and_cancels_the_copula_margins_in_eq17():
    """--g-output margins: σ = x(a) through each pixel's histogram (dcgan.MarginOutput). Eq. 10's exact
    log|det J| and jvp1-tanh's exact σ term against autograd through σ; and over D's copula base with f ≡ 0,
    D(x(a))/w + log σ'(a) is the base mixture of the normal scores, log mix(a), in value and in gradient:
    the margins' jumps, invisible to a gradient in x, are gone from G's objective."""
    from owf.baselines import CopulaMixture
    imgs = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:200, :, :3] = 0                                            # a histogram with a heavy bin 0, as Fashion-MNIST's
    base = CopulaMixture.fit_pixels(imgs, 3)
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 8), latent=10, output="margins").eval()
    G.net[-1].fit(base)
    u = G.noise(3, torch.Generator().manual_seed(1))
    h, sigma = G.net[:-1], G.net[-1]
    a = h(u).detach()
    y, ld = G.logdet(u, "exact")
    J = torch.func.jacrev(lambda w: G.net(w[None]).flatten())
    want = torch.stack([torch.linalg.slogdet(J(ui).double()).logabsdet for ui in u]).float()
    torch.testing.assert_close(ld, want, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(y, G(u))
    assert (y > -1).all() and (y < 1).all()
    v = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    v = v / v.norm(dim=1, keepdim=True)
    _, a_dot = torch.func.jvp(h, (u,), (v,))
    _, ld1 = G.logdet(u, "jvp1-tanh", torch.Generator().manual_seed(2))
    dx_da = torch.func.grad(lambda t: sigma(t).sum())(a.double())          # σ is elementwise: J_σ's diagonal
    torch.testing.assert_close(ld1, a_dot.flatten(1).norm(dim=1).log() + dx_da.log().flatten(1).sum(1).float(),
                               rtol=1e-4, atol=1e-2)
    D = ConvEnergy((1, 8, 8), widths=(4, 8), base_w=0.01, base_components=3, base_margins=True)
    D.fit_base(base)
    with torch.no_grad():
        D.net[-1].weight.zero_()                                      # f ≡ 0: D = w log p_0
    at = a.clone().requires_grad_()
    obj = D(sigma(at)) / 0.01 + sigma.log_derivative(at)
    (g,) = torch.autograd.grad(obj.sum(), at)
    zt = a.flatten(1).double().requires_grad_()
    (g_want,) = torch.autograd.grad(base.log_prob(zt).sum(), zt)
    torch.testing.assert_close(obj.double(), base.log_prob(a.flatten(1).double()), rtol=1e-6, atol=1e-2)
    torch.testing.assert_close(g.flatten(1).double(), g_want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="g_output='margins'.*d_base='copula'"):
        Config(data="fashion-mnist", g_output="margins", d_base="gaussian")
    with pytest.raises(ValueError, match="generator output 'sigmoid'"):
        DCGANFlow((1, 8, 8), widths=(16, 8), output="sigmoid")


def test_a_generator_started_at_the_copula_base_is_the_base_and_keeps_eq10_exact():
    """--g-base: G's latent is the copula base's mixture over the normal scores and its network a = u + h(u),
    h's last layer zero. At the start q = p_0: Eq. 10's log q at G's samples is D's log p_0 there; the
    draws follow the mixture (their mean and log-density); once h moves, Eq. 10's exact log|det J| is
    autograd's through the residual and the margins."""
    from owf.baselines import CopulaMixture
    imgs = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:200, :, :3] = 0
    base = CopulaMixture.fit_pixels(imgs, 3)
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 8), output="margins", base_latent=3).eval()
    G.net[-1].fit(base)
    G.fit_base_latent(base)
    D = ConvEnergy((1, 8, 8), widths=(4, 8), base_w=0.01, base_components=3, base_margins=True)
    D.fit_base(base)
    y, log_q, ld, u, k = G.sample_with_log_prob(5, "exact", torch.Generator().manual_seed(1), return_u=True)
    assert k is None and G.d == G.n == 64
    torch.testing.assert_close(G.log_latent(u).double(), base.log_prob(u.double()), rtol=0, atol=1e-3)
    torch.testing.assert_close(log_q.double(), D.log_base(y), rtol=0, atol=2e-2)      # q = p_0 at the start
    many = G.noise(20_000, torch.Generator().manual_seed(2)).double()
    want = (base.log_pi.exp()[:, None] * base.mu).sum(0)
    assert (many.mean(0) - want).abs().max() < 0.05                                    # sd of the mean ≈ 0.007-0.02
    with torch.no_grad():
        G.net[0].h[-1].weight.normal_(0, 0.1)
    _, ld = G.logdet(u, "exact")
    J = torch.func.jacrev(lambda w: G.net(w[None]).flatten())
    want_ld = torch.stack([torch.linalg.slogdet(J(ui).double()).logabsdet for ui in u]).float()
    torch.testing.assert_close(ld, want_ld, rtol=1e-4, atol=1e-2)
    assert not torch.allclose(ld, torch.zeros_like(ld) + ld.mean(), atol=1e-3)       # h moved: the log-dets differ
    with pytest.raises(ValueError, match="g_base=True .* d_base='copula', g_output='margins' and no g_mixture"):
        Config(data="fashion-mnist", g_base=True, g_output="tanh")


def test_the_saturated_share_of_data_is_the_part_of_the_end_bins_past_tanh_3():
    """Half the pixels 0, a quarter 255, a quarter 128: 1 - tanh(3) of each end bin's width 2/256
    lies past ±tanh(3) (|atanh x| > 3), none of the middle bin."""
    u8 = torch.cat([torch.zeros(200, 1, 16, 16), torch.full((100, 1, 16, 16), 255.0),
                    torch.full((100, 1, 16, 16), 128.0)]).to(torch.uint8)
    want = 0.75 * (1 - math.tanh(3.0)) / (2 / 256)
    assert abs(saturated_share(u8) - want) < 0.005          # 102,400 pixels: sd 0.0015


def test_the_exact_entropy_of_a_sub_batch_is_the_batchs_function_and_its_gradient():
    """exact_logdet_at_batch (--entropy-samples): the log|det J| of k samples of g_n normalised by the
    whole batch's statistics equals each sample's own in the whole batch's exact log-det, in value and
    in its gradient, the statistics' path included (so a term that both carry cancels in
    exact_entropy_control_variate); the oracle is torch.autograd.functional.jacobian through a copy
    whose BatchNorms normalise by the batch's (biased) statistics, kept with their graph; the running
    statistics stay untouched."""
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 8), latent=10).double().train()
    u = G.noise(5, torch.Generator().manual_seed(1))
    params = list(G.parameters())
    before = {k: b.clone() for k, b in G.named_buffers()}
    _, ld_all = G.logdet(u, "exact")                     # every sample's own, train mode
    for k, b in G.named_buffers():
        b.copy_(before[k])
    ld = G.exact_logdet_at_batch(u[:2], u)
    torch.testing.assert_close(ld, ld_all[:2])
    assert G.training and all(torch.equal(b, before[k]) for k, b in G.named_buffers())
    assert all(p is q for p, q in zip(G.parameters(), params))       # the folded affine is undone
    grads = torch.autograd.grad(ld.sum(), params, retain_graph=True)
    torch.testing.assert_close(torch.autograd.grad(ld_all[:2].sum(), params), grads)
    # the oracle: each BatchNorm of a copy replaced by (x - μ) / √(σ² + ε) γ + β with μ, σ² the batch's,
    # computed from u with their graph, then autograd's Jacobian of one sample at a time
    ref = copy.deepcopy(G)
    stats = {}
    bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, a: stats.__setitem__(
        m, (a[0].mean((0, 2, 3)), a[0].var((0, 2, 3), unbiased=False)))) for m in bns]
    ref.g_n(u)
    for h in hooks:
        h.remove()
    for m in bns:
        mean, var = (s[None, :, None, None] for s in stats[m])
        m.forward = lambda x, m=m, mean=mean, var=var: ((x - mean) / torch.sqrt(var + m.eps)
                                                        * m.weight[None, :, None, None] + m.bias[None, :, None, None])
    want = sum(torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: ref.net(v.unsqueeze(0)).flatten(), u[b], create_graph=True)).logabsdet for b in range(2))
    torch.testing.assert_close(want, ld.sum())
    torch.testing.assert_close(torch.autograd.grad(want, list(ref.parameters())), grads)


def test_the_exact_entropy_of_a_sub_batch_with_a_batchnorm_held_in_eval_and_one_without_running_statistics():
    """exact_logdet_at_batch folds only the BatchNorms in train mode (one held in eval keeps its running
    statistics, as the train-mode pass does), accepts track_running_stats=False, and leaves each module's
    mode as it was: value and gradient equal each sample's own in a train-mode pass over the batch."""
    torch.manual_seed(0)
    G = DCGANFlow((1, 8, 8), widths=(16, 8), latent=10).double().train()
    bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    bn[0].track_running_stats = False
    bn[0].running_mean = bn[0].running_var = bn[0].num_batches_tracked = None
    bn[1].eval()
    with torch.no_grad():
        bn[1].running_mean.normal_()
        bn[1].running_var.uniform_(0.5, 2.0)
    u = G.noise(6, torch.Generator().manual_seed(1))
    params = list(G.parameters())
    _, ld_all = G.logdet(u, "exact")
    ld = G.exact_logdet_at_batch(u[:2], u)
    assert G.training and not bn[1].training and bn[0].running_mean is None
    torch.testing.assert_close(ld, ld_all[:2])
    torch.testing.assert_close(torch.autograd.grad(ld.sum(), params, retain_graph=True),
                               torch.autograd.grad(ld_all[:2].sum(), params))


@pytest.mark.parametrize("kind", [1, 3, "copula"])
def test_the_base_measure_is_the_fitted_density_and_survives_a_checkpoint(kind):
    """1: the atanh Gaussian (--d-base gaussian); 3: a Gaussian mixture (--d-base mixture); copula: a
    mixture of 3 over the pixels' normal scores (--d-base copula)."""
    from owf.baselines import AtanhGaussian, CopulaMixture, GaussianMixtureBase, dequantised_u
    from owf.model import log1m_tanh2
    k = 1 if kind == 1 else 3
    imgs = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    if k > 1:
        imgs[:150, :, :4] = 0                                           # two kinds of image: two modes

    def mixture(c):
        return GaussianMixtureBase.fit(dequantised_u(imgs, torch.Generator().manual_seed(0))[0], c, 2)

    base = {1: AtanhGaussian, 3: lambda i: mixture(3), "copula": lambda i: CopulaMixture.fit_pixels(i, 3)}[kind](imgs)
    D = ConvEnergy((1, 8, 8), widths=(4, 8), base_w=0.01, base_components=k, base_margins=kind == "copula")
    D.fit_base(base)
    plain = ConvEnergy((1, 8, 8), widths=(4, 8))
    plain.load_state_dict({name: v for name, v in D.state_dict().items() if not name.startswith("base_")})
    u, log_jac = dequantised_u(imgs[:5], torch.Generator().manual_seed(1))
    x = torch.tanh(u).view(5, 1, 8, 8).float()
    if kind == "copula":       # p_0 is a density of its own coordinate, the normal scores z: log p_x = log p(z) - log|dx/dz|
        z = base.coordinate.to_u(torch.tanh(u))
        want = base.log_prob(z) - base.coordinate.log_jac(z)
        torch.testing.assert_close(want, base.log_prob_u8(imgs[:5], torch.Generator().manual_seed(1)))
    else:
        want = base.log_prob(u) - log_jac
    # D(x) = f(x) + w log p_0(x), log p_0(x) = log Σ_k π_k N(u; μ_k, Σ_k) - Σ log(1 - x²) (atanh)
    torch.testing.assert_close(D(x), plain(x) + 0.01 * want.float(), rtol=1e-5, atol=1e-3)
    u32 = torch.atanh(x.flatten(1).double())                     # log_base in float64, to rounding
    if kind == "copula":
        z32 = base.coordinate.to_u(x.flatten(1))
        torch.testing.assert_close(D.log_base(x), base.log_prob(z32) - base.coordinate.log_jac(z32))
        torch.testing.assert_close(D.base_density().log_prob(z32), base.log_prob(z32))
    else:
        torch.testing.assert_close(D.log_base(x), base.log_prob(u32) - log1m_tanh2(u32).sum(1))
        torch.testing.assert_close(D.base_density().log_prob(u32), base.log_prob(u32))
    edge = torch.full((1, 1, 8, 8), -1.0, requires_grad=True)                  # a saturated generator's output
    D(edge).sum().backward()
    assert torch.isfinite(D(edge)).all() and torch.isfinite(edge.grad).all()
    again = ConvEnergy((1, 8, 8), widths=(4, 8), base_w=0.01, base_components=k, base_margins=kind == "copula")
    again.load_state_dict(D.state_dict())
    torch.testing.assert_close(again(x), D(x))
    other, k_other = (mixture(3), 3) if k == 1 else (AtanhGaussian(imgs), 1)
    with pytest.raises(ValueError, match=f"a base of {k_other} components for an energy built for {k}"):
        D.fit_base(other)
    if k == 3:               # margins or none, as the energy was built
        with pytest.raises(ValueError, match="a (CopulaMixture|GaussianMixtureBase) base for an energy built with"):
            D.fit_base(mixture(3) if kind == "copula" else CopulaMixture.fit_pixels(imgs, 3))


def test_a_quadratic_head_over_the_base_only_takes_mass_away_from_it():
    """--d-quadratic m with a base: D(x) = -½‖h(x)‖² + w log p_0(x), so f = D - w log p_0 ≤ 0 everywhere:
    the importance weights exp(f/w) of p_0's own samples are ≤ 1 (docs/likelihood.md, the bounded energy)."""
    from owf.baselines import AtanhGaussian
    imgs = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    base = AtanhGaussian(imgs)
    torch.manual_seed(0)
    D = ConvEnergy((1, 8, 8), widths=(4, 8), quadratic=3, base_w=0.01)
    D.fit_base(base)
    plain = ConvEnergy((1, 8, 8), widths=(4, 8), quadratic=3)
    plain.load_state_dict({name: v for name, v in D.state_dict().items() if not name.startswith("base_")})
    u = base.sample(500, torch.Generator().manual_seed(1))
    x = torch.tanh(u).view(500, 1, 8, 8)
    f = D(x) - 0.01 * D.log_base(x).float()
    h = plain.net(x)
    torch.testing.assert_close(f, -0.5 * (h * h).sum(1), rtol=1e-4, atol=1e-6)
    assert f.min() < -1e-3                                      # the head is live: a bound, not a constant


def test_the_image_defaults_are_the_copula_recipe_and_the_generator_follows_the_base():
    """python -m owf.train --data fashion-mnist trains G from the copula base (docs/likelihood.md, last
    section); over another base, with a mixture latent or the exact log-det, G is the tanh network; the
    WGAN baselines keep the networks and steps they were measured with; 2D takes none of it."""
    cfg = Config(data="fashion-mnist")
    assert (cfg.d_base, cfg.g_output, cfg.g_base, cfg.entropy_samples, cfg.d_quadratic, cfg.mcmc_weight, cfg.steps,
            cfg.catch_up) == ("copula", "margins", True, 1, 16, 0.6, 2000, 400)
    plain = ("tanh", False, 0, 0)
    for kw in (dict(d_base="gaussian"), dict(d_base="none"), dict(g_mixture=True), dict(logdet="exact"), dict(g_output="tanh")):
        cfg = Config(data="fashion-mnist", **kw)
        assert (cfg.g_output, cfg.g_base, cfg.entropy_samples, cfg.catch_up) == plain, kw
    cfg = Config(data="fashion-mnist", g_base=False)                   # the margins recipe: Eq. 9 alone
    assert (cfg.g_output, cfg.g_base, cfg.entropy_samples, cfg.catch_up) == ("margins", False, 0, 0)
    for loss in ("wgan", "wgan-gp"):
        cfg = Config(data="fashion-mnist", loss=loss)
        assert (cfg.d_base, cfg.d_quadratic, cfg.steps, cfg.g_output, cfg.g_base, cfg.entropy_samples, cfg.catch_up) == \
            ("none", 0, 12000) + plain
    cfg = Config(data="ring")
    assert (cfg.g_output, cfg.g_base, cfg.entropy_samples, cfg.catch_up, cfg.d_quadratic) == plain + (16,)
    with pytest.raises(ValueError, match="catch_up=5 starts G again at the copula base: it needs g_base=True"):
        Config(data="fashion-mnist", g_base=False, catch_up=5)
    with pytest.raises(ValueError, match=r"until=2401 must be in \[0, steps \+ catch_up=2400\]"):
        Config(data="fashion-mnist", until=2401)


def test_the_catch_up_phase_holds_d_and_starts_g_again_at_the_base(tmp_path, fashion_root):
    """--catch-up N: after --steps, D is held (bitwise, its chains still) and G starts again from its
    step-0 state, q = p_0, with a fresh Adam: its first step moves no parameter by more than lr_G
    (Adam's first update is lr·g/(|g| + ε)); a resume in the middle of the phase ends bitwise the same."""
    from owf.train import build
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), steps=10)
    runs = {n: train(Config(**dict(kw, out=str(tmp_path / n), catch_up=c)), progress=False) for n, c in (("none", 0), ("one", 1))}
    assert runs["one"]["steps"] == 11 and runs["one"]["finished"]
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False) for n in ("none", "one"))
    for name in a["D"]:
        assert torch.equal(a["D"][name], b["D"][name]), name
    assert torch.equal(a["task"]["chains"]["u"], b["task"]["chains"]["u"]) and b["task"]["chains"]["steps"] == 10
    cfg = Config(**dict(kw, catch_up=1))
    G0 = build(cfg, torch.device("cpu"), saved_d=b["D"])[1]               # G at step 0: the base
    lr = cfg.lr_g
    moved_from_start = max(float((b["G"][n] - p.detach()).abs().max()) for n, p in G0.named_parameters())
    moved_in_training = max(float((a["G"][n] - p.detach()).abs().max()) for n, p in G0.named_parameters())
    assert 0 < moved_from_start <= lr * (1 + 1e-5) < moved_in_training, (moved_from_start, moved_in_training)
    # a resume in the middle of the phase
    kw["catch_up"] = 4
    full = train(Config(out=str(tmp_path / "full"), **kw), progress=False)
    train(Config(out=str(tmp_path / "half"), until=12, **kw), progress=False)
    resumed = train(resume=str(tmp_path / "half"), progress=False)
    assert full["steps"] == resumed["steps"] == 14
    rows = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]     # the chains stand still in the phase
    assert [(r["step"], "mcmc_accept" in r) for r in rows] == [(5, True), (10, True), (14, False)]
    c, d = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False) for n in ("full", "half"))
    for k in ("G", "D"):
        for name in c[k]:
            assert torch.equal(c[k][name], d[k][name]), f"{k}.{name}"
    for s, s2 in zip(c["opt_g"]["state"].values(), d["opt_g"]["state"].values()):    # Adam counts the phase's 4 steps
        assert float(s["step"]) == float(s2["step"]) == 4 and torch.equal(s["exp_avg_sq"], s2["exp_avg_sq"])


def test_a_likelihood_run_logs_the_probe_and_refuses_what_does_not_fit(tmp_path, fashion_root):
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), steps=10, defensive=0.25,
              d_base="gaussian")                      # a tanh output: its saturation is probed
    cfg = Config(out=str(tmp_path / "r"), **kw)
    assert cfg.dequantise and cfg.logdet == "jvp1-tanh" and cfg.defensive_proposal == "uniform" and cfg.g_output == "tanh"
    m = train(cfg, progress=False)
    rows = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl")]
    for r in rows:
        assert {"probe_log_q", "probe_logdet", "saturated"} <= set(r) and 0 <= r["saturated"] <= 1
    assert m["probe_log_q"] == rows[-1]["probe_log_q"]
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="d_base"):
        Config(data="fashion-mnist", loss="wgan-gp", d_base="gaussian")
    for bad in (dict(entropy_samples=65), dict(entropy_samples=-1), dict(entropy_samples=1, logdet="exact"),
                dict(entropy_samples=1, g_alpha=0.5), dict(entropy_samples=1, loss="wgan-gp")):
        with pytest.raises(ValueError, match="entropy_samples"):
            Config(data="fashion-mnist", **bad)
    assert Config(data="fashion-mnist", loss="wgan-gp").d_base == "none"              # a critic is no density
    for k, v in (("dequantise", True), ("d_base", "gaussian"), ("defensive_proposal", "uniform")):
        with pytest.raises(ValueError, match=k):
            Config(data="ring", **{k: v})
    # a run saved before these options loads as it trained: bin-valued pixels, no base measure
    old = dict(Config(data="fashion-mnist").to_dict())
    for k in ("dequantise", "d_base", "defensive_proposal", "g_output", "g_base", "entropy_samples", "d_quadratic",
              "catch_up"):
        old.pop(k)
    legacy = Config.from_saved(old)
    assert legacy.dequantise is False and legacy.d_base == "none" and legacy.d_quadratic == 0
    assert legacy.g_output == "tanh" and legacy.g_base is False and legacy.entropy_samples == 0 and legacy.catch_up == 0


# ---- a mixture latent matched to the base mixture (--g-mixture)

def _matched_pair(log_pi_g, log_pi_d, w=0.01):
    """G: y = tanh(A u + b) with 2 latent components; D: f ≡ 0 on a 2-component base whose component
    k is exactly G's, N(A m_k + b, A Aᵀ) in atanh space (π from log_pi_d). Float64."""
    from owf.model import OneWayFlowBase
    gen = torch.Generator().manual_seed(3)
    A = 0.3 * torch.randn(16, 16, generator=gen, dtype=torch.float64) + 0.4 * torch.eye(16, dtype=torch.float64)
    b = 0.1 * torch.randn(16, generator=gen, dtype=torch.float64)
    lin = nn.Linear(16, 16).double()
    with torch.no_grad():
        lin.weight.copy_(A)
        lin.bias.copy_(b)
    G = OneWayFlowBase(nn.Sequential(lin, nn.Unflatten(1, (1, 4, 4)), nn.Tanh()), 16, 4, (1, 4, 4), components=2).double()
    D = ConvEnergy((1, 4, 4), widths=(4,), base_w=w, base_components=2).double()
    with torch.no_grad():
        G.latent_log_pi.copy_(torch.tensor(log_pi_g, dtype=torch.float64))
        G.latent_shift.fill_(1.5)                 # (8 by default) components that overlap, r_k far from 0 and 1
        m = G.latent_shift * torch.eye(2, 16, dtype=torch.float64)          # m_k = c e_k [2, 16]
        D.base_mu.copy_(m @ A.T + b)
        D.base_L.copy_(torch.linalg.cholesky(A @ A.T).expand(2, 16, 16))
        D.base_log_pi.copy_(torch.tensor(log_pi_d, dtype=torch.float64))
        D.net[-1].weight.zero_()                                            # f ≡ 0: P_D = p_0, ζ = 1
    return G, D, m


def test_a_mixture_latent_draws_its_components_with_their_exact_density():
    G, D, m = _matched_pair([math.log(0.3), math.log(0.7)], [math.log(0.5)] * 2)
    u, k = G.draw(20_000, torch.Generator().manual_seed(0))
    assert abs(float(k.double().mean()) - 0.7) < 0.01                       # k ~ Cat(π)
    for c in (0, 1):                                  # z ~ N(c e_k, I): the shift on coordinate k only
        shifted = u[k == c] - m[c]
        assert shifted.mean(0).abs().max() < 0.05 and (shifted.std(0) - 1).abs().max() < 0.05
    mvn = torch.distributions.MultivariateNormal(torch.zeros(16, dtype=torch.float64), torch.eye(16, dtype=torch.float64))
    joint = torch.stack([G.latent_log_pi[c] + mvn.log_prob(u[:5] - m[c]) for c in (0, 1)])      # [K, 5]
    torch.testing.assert_close(G.log_latent(u[:5], k[:5]), joint.gather(0, k[:5].view(1, -1)).squeeze(0))
    torch.testing.assert_close(G.log_latent(u[:5]), torch.logsumexp(joint, 0))     # the mixture's log p(u)
    state = DCGANFlow((1, 8, 8), widths=(16, 4), latent=4, components=3).state_dict()
    assert state["latent_shift"] == 8 and state["latent_log_pi"].shape == (3,)
    assert not any(k.startswith("latent_") for k in DCGANFlow((1, 8, 8), widths=(16, 4), latent=4).state_dict())
    with pytest.raises(ValueError, match="latent components=5 must be in \\[1, d=4\\]"):
        DCGANFlow((1, 8, 8), widths=(16, 4), latent=4, components=5)
    with pytest.raises(ValueError, match="one Gaussian"):
        ConvEnergy((1, 4, 4), widths=(4,), base_w=0.01).component_energy(torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))
    for bad in (dict(g_mixture=True, d_base="none"), dict(g_mixture=True, d_base="gaussian"), dict(g_mixture=True, d_base="mixture", g_alpha=0.5)):
        with pytest.raises(ValueError, match=r"g_mixture=True .* d_base in \('mixture', 'copula'\) and g_alpha=1"):
            Config(data="fashion-mnist", **bad)


def test_a_mixture_latent_on_its_matched_base_is_the_base():
    """Each G component is exactly its base component and f ≡ 0, so P_D = p_0 = q: Eq. 10's log q
    with the mixture latent is log p_0, every importance weight exp(D/w) / q is 1, and r_k is the
    base's posterior. With G's π away from the base's, the weights p_0 / q keep mean ζ = 1."""
    G, D, _ = _matched_pair([math.log(0.5)] * 2, [math.log(0.5)] * 2)
    y, log_q, _, _, k = G.sample_with_log_prob(512, "exact", torch.Generator().manual_seed(1), return_u=True)
    log_w = (D(y) / 0.01 - log_q).detach()
    torch.testing.assert_close(log_w, torch.zeros_like(log_w), atol=1e-7, rtol=0)
    # component_energy = D + w log r_k, r_k the base's posterior of k, from torch.distributions
    log_r = torch.stack([(D.component_energy(y, torch.full_like(k, c)) - D(y)) / 0.01 for c in (0, 1)])   # [K, B]
    assert log_r.exp()[0].min() < 0.1 and log_r.exp()[0].max() > 0.9 and (log_r.exp()[0] - 0.5).abs().min() < 0.2
    u = torch.atanh(y.flatten(1).double())
    log_c = torch.stack([D.base_log_pi[c] + torch.distributions.MultivariateNormal(
        D.base_mu[c], scale_tril=D.base_L[c]).log_prob(u) for c in (0, 1)])
    torch.testing.assert_close(log_r.detach(), log_c - torch.logsumexp(log_c, 0))
    G, D, _ = _matched_pair([math.log(0.2), math.log(0.8)], [math.log(0.5)] * 2)
    with torch.no_grad():
        y, log_q, *_ = G.sample_with_log_prob(20_000, "exact", torch.Generator().manual_seed(2))
        w = (D(y) / 0.01 - log_q).exp()
    inside = y.flatten(1).abs().amax(1) < BASE_CLAMP             # a few reach D's clamp of atanh, |a| > 7.6
    assert inside.float().mean() > 0.999
    assert abs(float(w[inside].mean()) - 1) < 0.03, float(w[inside].std())


def test_a_training_step_with_a_mixture_latent_targets_each_component():
    """owf.train.train_step on the matched pair (equal π, f ≡ 0, lr_D ≈ 0): log ζ̂ = 0, so Eq. 16's
    loss is -mean D(x)/w; G's loss Eq. 17 with D + w log r_k is w·mean(log|det J| - log π_k p_0,k(y)) =
    -w·mean(log π_k + log N(u - m_k)) exactly. Without r_k it would be -w·mean(log p(u)) instead."""
    from owf.train import train_step
    G, D, m = _matched_pair([math.log(0.5)] * 2, [math.log(0.5)] * 2)
    cfg = Config(data="fashion-mnist", d_base="mixture", g_mixture=True, logdet="exact", orient=False, samples=32,
                 batch=8, mcmc_chains=0, lr_d=1e-12, w=0.01)

    class Task:
        def batch(self, n, gen, device):
            return G.sample(n, gen)

    gen = torch.Generator().manual_seed(4)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-12), torch.optim.Adam(D.parameters(), 1e-12)
    draws = torch.Generator().manual_seed(4)
    u, k = G.draw(32, draws)                                               # train_step's own first draw
    loss_d, loss_g, d_x, _, log_q, _ = train_step(cfg, Task(), G, D, opt_g, opt_d, gen, list(G.parameters()), "cpu")
    torch.testing.assert_close(loss_d, -(d_x / 0.01).mean())
    want = -0.01 * (G.latent_log_pi[k] - 0.5 * ((u - m[k]) ** 2).sum(1) - 8 * math.log(2 * math.pi)).mean()
    torch.testing.assert_close(loss_g.detach(), want)
    assert abs(float(want + 0.01 * G.log_latent(u).mean())) > 1e-3          # r_k is what makes it so


def test_log_zeta_from_the_base_measure_weighs_its_draws_by_the_network_part_alone():
    """--zeta-proposal base: D's loss takes log ζ̂ over S draws y of p_0 (ImageTask.base_samples), whose
    weights are exp(D/w) / p_0 = exp(f/w): with f ≡ 0 every weight is 1 and log ζ̂ = 0, though G's π is
    not the base's (G's own samples would weigh p_0 / q ≠ 1); with f ≠ 0, log ζ̂ = log mean exp(f(y)/w),
    f from D's network alone. The log q it returns (the logged ESS's) is log p_0 of the draws."""
    from owf.model import energy_head
    from owf.tasks import ImageTask
    from owf.train import train_step
    G, D, _ = _matched_pair([math.log(0.2), math.log(0.8)], [math.log(0.5)] * 2)
    cfg = Config(data="fashion-mnist", d_base="mixture", zeta_proposal="base", logdet="exact", orient=False,
                 samples=32, batch=8, mcmc_chains=0, lr_d=1e-12, w=0.01)
    drawn, batches = [], []

    class Task:
        shape, base = (1, 4, 4), D.base_density()

        def batch(self, n, gen, device):
            batches.append(G.sample(n, gen))
            return batches[-1]

        def base_samples(self, n, gen, like):
            drawn.append(ImageTask.base_samples(self, n, gen, like))
            return drawn[-1]

    def step(cfg, seed):
        opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-12), torch.optim.Adam(D.parameters(), 1e-12)
        gen = torch.Generator().manual_seed(seed)
        return train_step(cfg, Task(), G, D, opt_g, opt_d, gen, list(G.parameters()), "cpu")

    loss_d, _, d_x, d_y, log_q, _ = step(cfg, 4)
    torch.testing.assert_close(loss_d, -(d_x / 0.01).mean())                     # log ζ̂ = 0: every weight is 1
    y = drawn[-1]
    assert y.shape == (32, 1, 4, 4) and y.dtype == torch.float64
    u = torch.atanh(y.flatten(1))
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=D.base_log_pi),
                                                torch.distributions.MultivariateNormal(D.base_mu, scale_tril=D.base_L))
    torch.testing.assert_close(log_q, mix.log_prob(u) - torch.log1p(-y.flatten(1) ** 2).sum(1))
    torch.testing.assert_close(d_y / 0.01 - log_q, torch.zeros(32, dtype=torch.float64), atol=1e-6, rtol=0)
    loss_g_proposal = step(replace(cfg, zeta_proposal="generator"), 4)[0]       # G's samples: q ≠ p_0
    assert abs(float(loss_g_proposal.detach() - loss_d.detach())) > 1e-3
    with torch.no_grad():
        D.net[-1].weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(5))
    loss_d, _, d_x, _, _, _ = step(cfg, 6)
    x, y = batches[-1], drawn[-1]
    f = energy_head(D.net(y), D.quadratic)
    want = -(D(x) / 0.01).mean() + torch.logsumexp(f / 0.01, 0) - math.log(32)
    assert float(f.std() / 0.01) > 0.1
    torch.testing.assert_close(loss_d, want.detach())
    # D's gradient is that of Eq. 16 plus the energy penalty on the data (f/w held near 0: no drift)
    want = want + cfg.energy_l2 * (energy_head(D.net(x), D.quadratic) / 0.01).square().mean()
    got = [p.grad.clone() for p in D.parameters()]
    for g, p in zip(got, torch.autograd.grad(want, list(D.parameters()))):
        torch.testing.assert_close(g, p)
    with pytest.raises(ValueError, match="zeta_proposal='base' .* needs loss='owf' and a d_base, got "
                                         "data='fashion-mnist', loss='owf', d_base='none'"):
        Config(data="fashion-mnist", d_base="none", zeta_proposal="base")
