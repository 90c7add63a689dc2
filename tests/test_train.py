"""Training: it learns, it resumes exactly, it fails loudly and safely, and its CLI behaves."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import owf.train as train_mod
from owf.config import Config
from owf.train import NonFiniteLoss, build, main, mode_metrics, train
from support import BACKENDS

TINY = dict(g_hidden="32,32", d_hidden="32,32", batch=64, samples=64, log_every=10, sample_every=1000,
            ckpt_every=10, device="cpu")


def params(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)


def test_a_short_run_learns_the_modes(tmp_path):
    """1,200 steps on the ring: from the untrained generator's 0 modes and 0% HQ to most modes and
    a rising HQ. Bounds, not a trajectory: runs are chaotic in the BLAS kernels' rounding, which
    differs between CPUs (on one VM step 100 already had 8/8; here 1,200 steps end at 8/8, HQ 30%)."""
    cfg = Config(steps=1200, log_every=100, sample_every=10_000, ckpt_every=10_000, device="cpu",
                 out=str(tmp_path / "r"))
    task, G, *_ = build(cfg, torch.device("cpu"))
    untrained, _ = mode_metrics(G, task.data, cfg.seed, "cpu")
    m = train(cfg, progress=False)
    rows = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl")]
    assert untrained["modes"] <= 2 and untrained["hq"] < 0.02, untrained
    assert m["modes"] >= 6 and m["hq"] >= 0.12, m
    assert m["hq"] > rows[0]["hq"] + 0.08, rows        # HQ rises over the run
    for f in ("config.json", "metrics.json", "metrics.jsonl", "samples.png", "density.png", "checkpoint.pt"):
        assert (tmp_path / "r" / f).stat().st_size > 0
    assert {"modes", "hq", "steps", "seconds"} <= set(json.loads((tmp_path / "r" / "metrics.json").read_text()))


@pytest.mark.parametrize("loss, extra", [("owf", {}), ("wgan-gp", {}), ("owf", {"defensive": 0.25})])
def test_resume_continues_exactly(tmp_path, loss, extra):
    full = Config(steps=40, loss=loss, out=str(tmp_path / "full"), **TINY, **extra)
    train(full, progress=False)
    half = Config(steps=40, until=20, loss=loss, out=str(tmp_path / "half"), **TINY, **extra)
    m = train(half, progress=False)
    assert m["steps"] == 20 and not m["finished"]
    m = train(resume=str(tmp_path / "half"), progress=False)
    assert m["steps"] == 40 and m["finished"]
    a, b = params(tmp_path / "full"), params(tmp_path / "half")
    for k in ("G", "D"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name} differs after resume"
    assert torch.equal(a["rng"], b["rng"])
    rows = [json.loads(l)["step"] for l in open(tmp_path / "half" / "metrics.jsonl")]
    assert rows == sorted(set(rows)) and rows[-1] == 40


@pytest.mark.parametrize("field, value, message", [
    ("defensive", -0.1, "defensive=-0.1 must be >= 0"), ("g_alpha", 1.5, "g_alpha=1.5 must be in"),
    ("lr_d", -1.0, "lr_d=-1.0 must be positive"), ("lr_g", 0.0, "lr_g=0.0 must be positive"),
    ("beta1", 1.0, r"beta1=1.0 must be in \[0, 1\)"), ("beta2", -0.1, r"beta2=-0.1 must be in \[0, 1\)"),
    ("clip", 0.0, "clip=0.0 must be positive"), ("gp", -1.0, "gp=-1.0 must be >= 0"),
    ("threads", -2, "threads=-2 must be >= 0"), ("w", 0.0, "w=0.0 must be positive")])
def test_bad_values_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        Config(**{field: value})


def test_removed_options_load_when_off_and_are_named_when_on():
    """d_freeze, g_skip, ess_gate, spectral_norm and ema were removed (measured not to help), lr_decay
    and d_slope (never set otherwise): a checkpoint that had them at their old defaults loads as
    before; one trained with another value is an error that names it."""
    saved = Config(device="cpu").to_dict()
    old = dict(saved, d_freeze=0.0, g_skip=False, ess_gate=0.0, spectral_norm=False, ema=0.0, lr_decay=True,
               d_slope=0.2)
    assert Config.from_saved(old) == Config.from_saved(saved)
    with pytest.raises(ValueError, match=r"trained with g_skip=True \(--g-skip\), an option removed"):
        Config.from_saved(dict(saved, g_skip=True))
    with pytest.raises(ValueError, match=r"trained with lr_decay=False \(--lr-decay\), an option removed"):
        Config.from_saved(dict(saved, lr_decay=False))
    with pytest.raises(ValueError, match=r"fields this version of owf does not know: \['mystery'\]"):
        Config.from_saved(dict(saved, mystery=1))


def test_resume_refuses_to_change_the_run(tmp_path):
    train(Config(steps=10, out=str(tmp_path / "r"), **TINY), progress=False)
    with pytest.raises(ValueError, match=r"these cannot change: \['w'\]"):
        train(resume=str(tmp_path / "r"), overrides={"w": 0.5}, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = train_mod.generator_loss_renyi
    calls = []

    def flaky(*args):
        calls.append(1)
        out = real(*args)
        return out * float("nan") if len(calls) == 25 else out
    monkeypatch.setattr(train_mod, "generator_loss_renyi", flaky)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 25.*last good checkpoint is kept"):
        train(Config(steps=100, out=str(tmp_path / "r"), **TINY), progress=False)
    assert params(tmp_path / "r")["step"] == 20
    assert not (tmp_path / "r" / "checkpoint.pt.tmp").exists()


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "owf.train", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_dry_run_prints_the_resolved_config():
    p = run_cli("--dry-run", "--data", "grid", "--w", "0.5")
    assert p.returncode == 0
    cfg = json.loads(p.stdout)
    assert cfg["data"] == "grid" and cfg["w"] == 0.5
    from owf.config import DATA_DEFAULTS       # per-data defaults are resolved before printing
    assert {k: cfg[k] for k in DATA_DEFAULTS["grid"]} == DATA_DEFAULTS["grid"]
    assert cfg["out"] == "runs/grid-owf-s0"


def test_bad_data_and_flags_list_the_choices():
    p = run_cli("--data", "moons", "--dry-run")
    assert p.returncode == 2 and "invalid choice: 'moons' (choose from 'ring', 'grid', 'fashion-mnist'" in p.stderr
    p = run_cli("--stepz", "5", "--dry-run")
    assert p.returncode == 2 and "did you mean --steps" in p.stderr and "valid flags:" in p.stderr
    p = run_cli("--loss", "gan", "--dry-run")
    assert p.returncode == 2 and "'owf', 'wgan', 'wgan-gp'" in p.stderr
    p = run_cli("--g-hidden", "64,x", "--dry-run")
    assert p.returncode == 2 and "g_hidden='64,x'" in p.stderr
    p = run_cli("--d-quadratic", "-2", "--dry-run")
    assert p.returncode == 2 and "d_quadratic=-2 must be >= 0" in p.stderr


def test_bad_values_and_unreadable_checkpoints_are_one_line_errors(tmp_path):
    p = run_cli("--lr-d", "-1", "--dry-run")
    assert p.returncode == 2 and "lr_d=-1.0 must be positive" in p.stderr and "Traceback" not in p.stderr
    run = tmp_path / "run"
    run.mkdir()
    for content in (b"\x80\x04truncated", b"not a checkpoint at all"):
        (run / "checkpoint.pt").write_bytes(content)
        for cmd in (["-m", "owf.train", "--resume", str(run)], ["-m", "owf.evaluate", str(run)]):
            p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120)
            assert p.returncode == 2, p.stderr
            assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert f"{run / 'checkpoint.pt'} is not a readable owf checkpoint" in p.stderr
    torch.save({"something": 1}, run / "checkpoint.pt")
    p = run_cli("--resume", str(run))
    assert p.returncode == 2 and "is not an owf checkpoint: it needs the keys" in p.stderr
    p = run_cli("--resume", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "no checkpoint at" in p.stderr and "Traceback" not in p.stderr


def test_help_groups_the_options():
    out = run_cli("--help").stdout
    heads = [out.index(f"\n{g}:\n") for g in ("objective", "schedule", "networks", "run")]
    assert heads == sorted(heads)
    at = {f: out.index(f"\n  --{f} ") for f in ("loss", "lr-d", "d-hidden", "seed")}   # the help body, not usage
    assert heads[0] < at["loss"] < heads[1] < at["lr-d"] < heads[2] < at["d-hidden"] < heads[3] < at["seed"]


def test_train_leaves_the_allocator_alone_unless_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "keep_freed_memory", lambda: calls.append(1))
    train(Config(steps=2, out=str(tmp_path / "a"), **TINY), progress=False)
    assert calls == []
    train(Config(steps=2, out=str(tmp_path / "b"), **TINY), progress=False, tune_cpu_allocator=True)
    assert calls == [1]


def test_orient_needs_the_exact_logdet():
    with pytest.raises(ValueError, match="orient=True needs logdet='exact' \\(got 'jvp1'\\)"):
        Config(logdet="jvp1", orient=True)


def test_existing_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    assert main(["--out", str(out), "--steps", "5"]) == 2
    assert (out / "keep.txt").exists()
    assert main(["--out", str(out), "--steps", "5", "--overwrite", "--g-hidden", "16", "--d-hidden", "16",
                 "--device", "cpu"]) == 0
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()


def test_ctrl_c_saves_before_exiting(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "owf.train", "--out", str(out), "--steps", "100000",
                          "--device", "cpu", "--log-every", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    step = params(out)["step"]
    assert 50 <= step < 100000
    assert f"--resume {out}" in stderr
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not installed")
def test_trains_the_same_under_the_triton_backend(tmp_path, monkeypatch):
    """A short run on the Triton kernels (interpreted on CPU) ends where the torch path ends.

    G's parameters and D's weights must agree to float tolerance. D is compared as a function up to
    a constant: a bias whose gradient is analytically zero (Eq. 16 is blind to constants, so e.g. a
    hidden unit that is linear on every sample) moves by ±lr under Adam on rounding noise alone.
    """
    kw = dict(TINY, steps=8, g_hidden="16,16", d_hidden="16,16", batch=32, samples=32, log_every=4)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    train(Config(out=str(tmp_path / "torch"), **kw), progress=False)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    train(Config(out=str(tmp_path / "triton"), **kw), progress=False)
    a, b = params(tmp_path / "torch"), params(tmp_path / "triton")
    assert a["step"] == b["step"] == 8
    # float tolerance: 2e-5 is 0.1% of how far 8 Adam steps at lr 3e-3 move a parameter
    for name in a["G"]:
        torch.testing.assert_close(a["G"][name], b["G"][name], atol=2e-5, rtol=1e-4, msg=f"G.{name}")
    for name in a["D"]:
        if name.endswith("weight"):
            torch.testing.assert_close(a["D"][name], b["D"][name], atol=2e-5, rtol=1e-4, msg=f"D.{name}")
    from owf.data import ring
    from owf.model import Energy
    x = ring().sample(500, torch.Generator().manual_seed(0))
    energies = []
    for st in (a, b):
        D = Energy.from_config(Config(**kw), 2)
        D.load_state_dict(st["D"])
        with torch.no_grad():
            e = D(x)
        energies.append(e - e.mean())
    torch.testing.assert_close(energies[0], energies[1], atol=1e-5, rtol=1e-4)
    G0 = build(Config(**kw), torch.device("cpu"))[1]          # the initial generator: training moved it
    assert not torch.allclose(G0.layers[0].weight, a["G"]["net.0.weight"], atol=1e-4)


def test_a_checkpoint_saved_before_a_field_existed_loads_with_its_old_value():
    """Runs saved before `d_quadratic` existed had a linear energy head: they load as d_quadratic=0,
    not as today's default, so their state dicts still fit."""
    saved = Config(device="cpu").to_dict()
    assert saved["d_quadratic"] == 16
    assert Config.from_saved(saved).d_quadratic == 16
    del saved["d_quadratic"]
    assert Config.from_saved(saved).d_quadratic == 0


def test_grid_runs_saved_before_the_defensive_defaults_load_as_eq16_and_eq17():
    """The grid's defaults became --defensive 0.25 --g-alpha 0.75; a grid run saved before those
    fields existed was trained with Eq. 16 and Eq. 17 (0 and 1), and a resume must keep that."""
    saved = Config(data="grid", device="cpu").to_dict()
    assert (saved["defensive"], saved["g_alpha"]) == (0.25, 0.75)
    assert Config(device="cpu").to_dict()["defensive"] == 0.0          # the ring keeps the paper's losses
    for k in ("defensive", "g_alpha"):
        del saved[k]
    old = Config.from_saved(saved)
    assert (old.defensive, old.g_alpha) == (0.0, 1.0)
