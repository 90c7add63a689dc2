"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling") on Fashion-MNIST with a
small DiT, on the CPU, its JVP from owf_kernels.jvp or torch.func.jvp.

    python examples/meanflow.py --jvp owf --out runs/meanflow-owf          # about 15 minutes on one core
    python examples/meanflow.py --jvp torch --out runs/meanflow-torch      # the same run, torch.func.jvp
    python examples/meanflow.py --jvp owf --compile --out runs/meanflow-owf-compiled   # the step under torch.compile
    python examples/meanflow.py --compare runs/meanflow-owf runs/meanflow-torch   # the two loss curves
    python examples/meanflow.py --dry-run                                   # the resolved config

The network u_θ(z, t, r) predicts the average velocity between times r <= t of the flow
z_t = (1 - t) x + t e from data x (t = 0) to noise e (t = 1). MeanFlow's identity (Eq. 6),

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = ∂_z u · v + ∂_t u,

gives the training target u_tgt = v - (t - r) sg(du/dt) (Eq. 10) with v = e - x, and du/dt is one
Jacobian-vector product of u along (v, 1, 0) in (z, t, r): the call this example is about,

    u, dudt = jvp(lambda z, t, r: net(z, t, r, y), (z, t, r), (v, ones, zeros), tangent_grad=False)

(the labels y closed over; the tangent detached, as the stop-gradient wants). With --compile the
forward with the JVP and the loss run under torch.compile: owf's jvp is a graph break there that runs
its own program compiled by Inductor (owf_kernels/jvp_compiled.py); torch.func.jvp is compiled with
the step. The loss is the
adaptive-weighted squared error of Eq. 11 (p = 1): sg(w) ‖u - sg(u_tgt)‖², w = 1/(‖·‖² + c). One
step generates: x = e - u(e, t=1, r=0) (Eq. 12). The run folder gets config.json, losses.jsonl (one
line per step), samples.png (one column per class) and, with --compare, loss_curves.png.

With the same seed both engines draw the same data, times and noise and start from the same
weights: their losses agree to float32 rounding at first (owf's attention is the flash kernel,
torch's is softmax(q kᵀ/√d) v written out, since torch.func.jvp has no rule for SDPA on the CPU),
and drift apart as rounding differences grow through training.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import networks  # noqa: E402


@dataclasses.dataclass
class Config:
    jvp: str = "owf"                 # owf: owf_kernels.jvp; torch: torch.func.jvp (math attention)
    compile: bool = False            # torch.compile the forward with the JVP and the loss (the first step compiles)
    out: str = "runs/meanflow-owf"   # the run folder
    data_root: str = ""              # Fashion-MNIST's IDX files ("": the Debian package dataset-fashion-mnist)
    steps: int = 1500                # optimisation steps (owf: 0.6 s each on one core, measured at load ~1: 15 minutes)
    batch: int = 64                  # images per step
    lr: float = 3e-4                 # Adam
    warmup: int = 100                # linear learning-rate warm-up steps
    # networks.DiT: 28x28 images padded to 32x32 with the background colour
    patch: int = 4                   # 8x8 = 64 tokens
    width: int = 128
    depth: int = 4
    heads: int = 4
    # MeanFlow's time sampler (Sec. 4.3): logit-normal t and r, r = t for a fraction of the batch
    p_mean: float = -0.4
    p_std: float = 1.0
    flow_ratio: float = 0.75         # the share of samples with r = t (plain flow matching)
    adaptive_c: float = 1e-3         # c of the adaptive weight w = 1/(loss + c)
    seed: int = 0
    threads: int = 1                 # torch threads
    log_every: int = 50


def image_data(root: str):
    """Fashion-MNIST's training split in [-1, 1], padded to 32x32 (owf.images reads the IDX files)."""
    from owf.images import load_images, to_unit
    x, y = load_images("fashion-mnist", root, train=True)
    return F.pad(to_unit(x), (2, 2, 2, 2), value=-1.0), y


def sample_t_r(B: int, cfg: Config, g: torch.Generator):
    """MeanFlow's (t, r): two logit-normal draws, t the larger; r = t for a flow_ratio share."""
    s = torch.sigmoid(torch.randn(2, B, generator=g) * cfg.p_std + cfg.p_mean)
    t, r = s.max(0).values, s.min(0).values
    same = torch.rand(B, generator=g) < cfg.flow_ratio
    return t, torch.where(same, t, r)


def meanflow_loss(u, dudt, v, t, r, c):
    """Eq. 10-11: u_tgt = v - (t - r) sg(du/dt); sg(w) ‖u - u_tgt‖², w = 1/(‖·‖² + c), per sample."""
    u_tgt = v - (t - r).view(-1, 1, 1, 1) * dudt.detach()
    err = (u - u_tgt.detach()).square().flatten(1).sum(1)
    return (err / (err.detach() + c)).mean(), err.detach().mean()


def du_dt(engine, net, z, t, r, y, v):
    """u and du/dt = ∂_z u · v + ∂_t u: one JVP along (v, 1, 0), the tangent detached."""
    tangents = (v, torch.ones_like(t), torch.zeros_like(r))
    if engine == "owf":
        from owf_kernels import jvp
        return jvp(lambda z, t, r: net(z, t, r, y), (z, t, r), tangents, tangent_grad=False)
    return torch.func.jvp(lambda z, t, r: net(z, t, r, y), (z, t, r), tangents)


@torch.no_grad()
def one_step_samples(net, n_per_class: int, seed: int):
    """Eq. 12: x = e - u(e, t=1, r=0), n_per_class of each of the 10 classes, [10 n, 1, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    e = torch.randn(len(y), 1, 32, 32, generator=g)
    return (e - net(e, torch.ones(len(y)), torch.zeros(len(y)), y)).clamp(-1, 1), y


def save_samples(x, path, n_per_class):
    import torchvision
    grid = x[:, :, 2:30, 2:30].view(10, n_per_class, 1, 28, 28).transpose(0, 1).reshape(-1, 1, 28, 28)
    torchvision.utils.save_image((grid + 1) / 2, path, nrow=10, padding=1)


def compare(a: Path, b: Path):
    """Both runs' losses per step, overlaid, and their largest relative difference (first 100
    steps, and overall) -> a / loss_curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = []
    for d in (a, b):
        rows = [json.loads(line) for line in (d / "losses.jsonl").read_text().splitlines()]
        cfg = json.loads((d / "config.json").read_text())
        runs.append((cfg["jvp"], [r["step"] for r in rows], torch.tensor([r["mse"] for r in rows])))
    n = min(len(runs[0][2]), len(runs[1][2]))
    rel = ((runs[0][2][:n] - runs[1][2][:n]).abs() / runs[1][2][:n].abs())
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, steps, mse in runs:
        ax.plot(steps, mse.numpy(), label=f"--jvp {name}", lw=0.8, alpha=0.8)
    ax.set(xlabel="step", ylabel="‖u - u_tgt‖² (mean over the batch)", yscale="log",
           title=f"MeanFlow on Fashion-MNIST: largest relative difference {rel[:100].max():.1e} "
                 f"(first 100 steps), {rel.max():.1e} (all)")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a / "loss_curves.png", dpi=120)
    result = {"steps": n, "max_rel_diff_first_100": float(rel[:100].max()), "max_rel_diff": float(rel.max()),
              "plot": str(a / "loss_curves.png")}
    print(json.dumps(result))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(Config):
        if f.type == "bool":
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=f.default)
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=types[f.type], default=f.default,
                       choices=("owf", "torch") if f.name == "jvp" else None)
    p.add_argument("--compare", nargs=2, metavar="RUN", help="overlay two runs' loss curves, and exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    a = p.parse_args(argv)
    if a.compare:
        return compare(Path(a.compare[0]), Path(a.compare[1]))
    cfg = Config(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Config)})
    for name in ("steps", "batch", "patch", "width", "depth", "heads", "threads"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if 32 % cfg.patch or cfg.width % cfg.heads:
        raise ValueError(f"--patch {cfg.patch} must divide 32 and --heads {cfg.heads} the width {cfg.width}")
    print(json.dumps(dataclasses.asdict(cfg)))
    if a.dry_run:
        return
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    torch.set_num_threads(cfg.threads)

    # ---- data, network (the torch engine's copy writes attention out), optimiser
    x_all, y_all = image_data(cfg.data_root)
    torch.manual_seed(cfg.seed)
    net = networks.DiT(image=(1, 32, 32), patch=cfg.patch, width=cfg.width, depth=cfg.depth, heads=cfg.heads,
                       num_classes=10)
    if cfg.jvp == "torch":
        for m in net.modules():
            if hasattr(m, "attn"):
                m.attn = "math"
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)

    def forward(z, t, r, y, v):
        u, dudt = du_dt(cfg.jvp, net, z, t, r, y, v)
        return meanflow_loss(u, dudt, v, t, r, cfg.adaptive_c)
    if cfg.compile:
        forward = torch.compile(forward)
    log = open(out / "losses.jsonl", "w")
    t0 = time.time()
    for step in range(cfg.steps):
        # ---- learning rate: linear warm-up
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        # ---- batch: images, labels, times, noise; z_t and the conditional velocity v = e - x
        idx = torch.randint(len(x_all), (cfg.batch,), generator=g)
        x, y = x_all[idx], y_all[idx]
        t, r = sample_t_r(cfg.batch, cfg, g)
        e = torch.randn(x.shape, generator=g)
        z, v = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * e, e - x
        # ---- forward with the JVP, loss, backward, step
        loss, mse = forward(z, t, r, y, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # ---- log
        log.write(json.dumps({"step": step, "loss": loss.item(), "mse": mse.item(),
                              "seconds": round(time.time() - t0, 2)}) + "\n")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log.flush()
            print(f"step {step:5d}  loss {loss.item():.4f}  mse {mse.item():.4f}  {time.time() - t0:7.1f} s", flush=True)
    log.close()
    # ---- one-step samples, one column per class
    net.eval()
    if cfg.jvp == "torch":
        net = copy.deepcopy(net)
    samples, _ = one_step_samples(net, 10, cfg.seed)
    save_samples(samples, out / "samples.png", 10)
    summary = {"steps": cfg.steps, "seconds": round(time.time() - t0, 1), "final_mse": mse.item(),
               "samples": str(out / "samples.png")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
