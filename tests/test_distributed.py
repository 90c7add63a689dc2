"""Many processes (owf.distributed), two CPU processes on gloo: the first step's losses and
gradients are those of one process with the same total batch and the same samples; a 2-process
run trains, is interrupted and resumes exactly; a distributed ζ estimate equals the
single-process one over the same samples; and the bad input of a launch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from owf.distributed import average_gradients, global_log_zeta, global_softmax, local_device
from owf.losses import discriminator_loss_eq16, generator_loss_renyi, log_zeta_hat
from owf.model import Energy, OneWayFlow

B, S, W, ALPHA = 8, 6, 0.1, 0.75


def _full_batch():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2 * B, 2, generator=g)
    u = torch.randn(2 * S, 2, generator=g)
    return x, u


def _losses(G, D, x, u, rank=None, world=1):
    """Eq. 16 and the Rényi generator loss on (x, u), or on rank's half of them with the global
    log ζ̂ and softmax (the training step's distributed path)."""
    if rank is not None:
        x, u = x.chunk(world)[rank], u.chunk(world)[rank]
    y, ld = G.logdet(u, "exact")
    log_q = -0.5 * (u * u).sum(1) - torch.log(torch.tensor(2 * torch.pi)) - ld
    d_x, d_y = D(x), D(y.detach())
    zeta, softmax = (log_zeta_hat, None) if rank is None else (global_log_zeta, global_softmax)
    return (discriminator_loss_eq16(d_x, d_y, log_q.detach(), W, zeta),
            generator_loss_renyi(D(y), ld, log_q, W, ALPHA, softmax))


def _nets():
    torch.manual_seed(0)
    return OneWayFlow(2, hidden=(16, 16)), Energy(2, hidden=(16, 16), quadratic=4)


def _worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    G, D = _nets()
    x, u = _full_batch()
    loss_d, loss_g = _losses(G, D, x, u, rank, world)
    loss_d.backward()
    average_gradients(D.parameters())
    gd = [p.grad.clone() for p in D.parameters()]
    for p in G.parameters():
        p.grad = None
    loss_g.backward()
    average_gradients(G.parameters())
    gg = [p.grad.clone() for p in G.parameters()]
    if rank == 0:
        torch.save({"loss_d": float(loss_d), "gd": gd, "gg": gg}, out)
    dist.destroy_process_group()


def test_the_first_step_is_the_full_batchs(tmp_path):
    """2 ranks with half the data and half the samples each: log ζ̂ (so D's loss, up to the data
    mean, which differs by rank) and every gradient of D's and G's losses equal one process's on
    the whole batch, the Rényi weights included."""
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", str(out)), nprocs=2, join=True)
    got = torch.load(out)
    G, D = _nets()
    x, u = _full_batch()
    loss_d, loss_g = _losses(G, D, x, u)
    gd = torch.autograd.grad(loss_d, list(D.parameters()))
    gg = torch.autograd.grad(loss_g, list(G.parameters()))
    for a, b in zip(got["gd"], gd):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(got["gg"], gg):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    log_zeta_full = loss_d + (D(x) / W).mean()
    log_zeta_rank0 = got["loss_d"] + float((D(x[:B]) / W).mean())
    assert log_zeta_rank0 == pytest.approx(float(log_zeta_full), abs=1e-4)


def torchrun(*args, timeout=300, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", OWF_DIST_TIMEOUT="60", **(env or {})))


TINY = ["--g-hidden", "16,16", "--d-hidden", "16,16", "--batch", "32", "--samples", "32", "--log-every", "5",
        "--ckpt-every", "5", "--device", "cpu", "--threads", "1", "--steps", "20"]


def test_a_two_process_run_trains_is_interrupted_and_resumes(tmp_path):
    p = torchrun("-m", "owf.train", *TINY, "--out", str(tmp_path / "full"))
    assert p.returncode == 0, p.stderr[-2000:]
    p = torchrun("-m", "owf.train", *TINY, "--until", "10", "--out", str(tmp_path / "half"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "half" / "metrics.json").read_text())["steps"] == 10
    p = torchrun("-m", "owf.train", "--resume", str(tmp_path / "half"))
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert m["steps"] == 20 and m["world_size"] == 2 and m["finished"]
    assert json.loads((tmp_path / "full" / "config.json").read_text())["world_size"] == 2
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("full", "half"))
    for k in ("G", "D"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name} differs after the resume"
    assert len(a["rngs"]) == 2 and not torch.equal(a["rngs"][0], a["rngs"][1])      # a stream per rank
    # a resume on another number of processes is refused, by name
    p = subprocess.run([sys.executable, "-m", "owf.train", "--resume", str(tmp_path / "half")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "trained on 2 processes and is resumed on 1" in p.stderr


def test_a_two_process_image_run_resumes_its_batch_norms_exactly(tmp_path, fashion_root):
    """The defaults' image generator has BatchNorms, whose running statistics differ between ranks: the
    checkpoint keeps each rank's (and only those), and G's base latent once, shared with D's base."""
    args = ["--data", "fashion-mnist", "--data-root", str(fashion_root), "--g-hidden", "16,4", "--d-hidden", "4,8",
            "--batch", "16", "--samples", "16", "--log-every", "5", "--fid-every", "0", "--ckpt-every", "5",
            "--device", "cpu", "--threads", "1", "--steps", "10", "--catch-up", "0"]
    env = {"OWF_CACHE": os.environ["OWF_CACHE"]}
    for out, until in (("full", []), ("half", ["--until", "5"])):
        p = torchrun("-m", "owf.train", *args, *until, "--out", str(tmp_path / out), env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    p = torchrun("-m", "owf.train", "--resume", str(tmp_path / "half"), env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("full", "half"))
    for k in ("G", "D"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name} differs after the resume"
    bn = {k for k in a["G"] if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    assert bn and all(set(r) == bn for r in a["rank_buffers"])
    mean = next(k for k in sorted(bn) if k.endswith("running_mean"))
    assert not torch.equal(a["rank_buffers"][0][mean], a["rank_buffers"][1][mean])        # each rank's own
    assert a["G"]["base_L"].untyped_storage().data_ptr() == a["D"]["base_L"].untyped_storage().data_ptr()


def test_a_distributed_zeta_estimate_is_the_single_process_one(tmp_path):
    from owf.config import Config
    from owf.density import load
    from owf.distributed import RANK_SEED_STRIDE
    from owf.train import train
    run = tmp_path / "r"
    train(Config(out=str(run), g_hidden="16,16", d_hidden="16,16", batch=32, samples=32, steps=30, log_every=10,
                 device="cpu"), progress=False)
    p = torchrun("-m", "owf.evaluate", str(run), "--zeta-samples", "3000", "--batch-size", "1000", "--no-figures")
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads((run / "eval_distributed.json").read_text())
    assert got["num_samples"] == 6000 and got["world_size"] == 2
    # one process, the same samples: rank 0's and rank 1's streams, kept and pooled
    model = load(run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as each torchrun worker (OMP_NUM_THREADS=1): the same GEMM blocking
    try:
        pools = [model.estimate_log_zeta(3000, "generator", 1000, torch.Generator().manual_seed(RANK_SEED_STRIDE * r),
                                         keep_log_weights=True) for r in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    from owf.density import signed_estimate, signed_partials
    lw = torch.cat([q.log_weights for q in pools])
    sg = torch.cat([q.signs for q in pools])
    want = signed_estimate(*signed_partials(lw, sg))[0]
    assert got["log_zeta"] == pytest.approx(want, abs=1e-9)


def test_a_rank_that_dies_stops_the_run(tmp_path):
    """Kill one worker mid-run: the launch ends, with an error, in bounded time (no hang)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", "-m", "owf.train", *TINY[:-1], "100000",
           "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", OWF_DIST_TIMEOUT="30"), start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "r" / "metrics.jsonl").exists():
            time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "owf.train"], capture_output=True,
                                 text=True).stdout.split()
        assert workers, "no worker processes found"
        os.kill(int(workers[-1]), signal.SIGKILL)
        proc.communicate(timeout=120)        # raises TimeoutExpired if the launch hangs
        assert proc.returncode != 0
    finally:                                 # a failed check must not leave the 100,000-step run behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cuda_with_fewer_gpus_than_processes_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="--device cuda with 4 processes per node but 1 GPUs"):
        local_device("cuda")
    assert local_device("cpu") == torch.device("cpu")
