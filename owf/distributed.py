"""Data-parallel training on many processes (torchrun): the process group, the global log ζ̂ and the
gradient average.

    torchrun --nproc_per_node=2 -m owf.train ...       # gloo on CPU, NCCL on GPUs

Every rank holds the same networks and draws its own data and generator samples (its own random
stream, seed + rank). The discriminator's log ζ̂ is ONE estimate over every rank's importance
samples (Eq. 2, 16): each rank's partials (max m_r, Σ exp(l - m_r), count n_r) of its
l_i = D(y_i)/w - log q(y_i), three scalars, are all-gathered (one collective) into the global log-sum-exp

    lse = M + log Σ_r s_r exp(m_r - M),   M = max_r m_r,    log ζ̂ = lse - log Σ_r n_r,

so that the loss is the one of one process with all ranks' samples. Its gradient flows through
the all-reduce as the softmax weights of the GLOBAL lse: ∂ log ζ̂ / ∂ l_i = exp(l_i - lse) for the
samples of every rank, computed locally on each (no gradient is communicated for it), and scaled
by the world size N, because the gradients are then averaged over ranks (the data term's mean over
each rank's batch averages to the mean over all of them as it is).

The gradients are averaged with one all-reduce per network per step over a flat buffer (what
DistributedDataParallel does with its buckets; its wrapper is not used because the generator's
gradients come from torch.autograd.grad of sample_with_log_prob, not from a forward and backward of
its module). Three more scalars ride in the generator's buffer: the ranks' loss_d and loss_g and
an interrupt flag, summed, so that every rank stops on the same step, a non-finite loss or Ctrl-C
on one rank included. Parameters are broadcast from rank 0 at the start. BatchNorm in the
generator uses per-rank statistics (the per-sample log q is the Jacobian of each sample's map
within its rank's batch). SyncBatchNorm was not an option: on CPU tensors it raises ("SyncBatchNorm
expected input tensor to be on GPU", torch 2.14.1, gloo), it has no fused owf_kernels.jvp rule, and
it would add a collective per layer per step. Its running statistics stay per rank, and each rank's are in the checkpoint, so that a
resume is exact; what rank 0 saves as G and evaluates carries their average over ranks
(averaged_buffers). Rank-0-only work (a classifier FID, pictures) must end within the timeout.
Collectives time out after OWF_DIST_TIMEOUT seconds (default 300): a rank that dies makes the
others exit with that message instead of hanging. The entry points hold the group in
process_group(), which ends it on every rank before the interpreter exits.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os

import torch
import torch.distributed as dist

TIMEOUT_S = float(os.environ.get("OWF_DIST_TIMEOUT", "300"))
# rank r's random streams (training, evaluation) are seeded seed + RANK_SEED_STRIDE * r
RANK_SEED_STRIDE = 1_000_003


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device_name: str) -> torch.device:
    """This process's device for --device auto | cpu | cuda: the CPU, or the GPU of its local rank
    (one GPU per process; a single process: cuda:0)."""
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device; use --device cpu or auto")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if torch.cuda.device_count() < per_node:
        raise ValueError(f"--device cuda with {per_node} processes per node but {torch.cuda.device_count()} GPUs: "
                         "one GPU per process (--nproc_per_node at most the GPU count, or --device cpu)")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(device_name: str):
    """Within the block, the process group of torchrun's environment (gloo on CPU, NCCL on GPUs,
    collectives timing out after TIMEOUT_S); nothing on a single process. At its end each rank
    destroys the group, without waiting for the others (rank 0's final pictures and evaluation
    may outlast the timeout). A gloo group left to the interpreter's exit can abort a rank
    ("terminate called without an active exception", SIGABRT: 4 of 37 two-rank runs of
    `owf.train` on a 2-core VM, torch 2.14.1; 0 of 40 with the group destroyed; docs/distributed.md)."""
    if not launched():
        yield
        return
    device = local_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def broadcast_module(module: torch.nn.Module):
    """Every rank starts from rank 0's parameters and buffers."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, 0)


def batch_norm_buffers(module: torch.nn.Module):
    """(name, buffer) of every BatchNorm's buffers in `module` (running statistics, batch count): the only
    buffers that differ between ranks, which a checkpoint of many processes keeps for each."""
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for k, b in m.named_buffers(recurse=False):
                yield (f"{name}.{k}" if name else k), b


@contextlib.contextmanager
def averaged_buffers(module: torch.nn.Module):
    """Within the block, BatchNorm's running statistics hold their average over ranks; after it, each
    rank's own again. Every rank enters it (a collective). Other buffers (a mixture latent's π, the
    margins of --g-output margins) are the same on every rank and are left alone."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bufs = [b for m in bns for b in (m.running_mean, m.running_var) if b is not None]
    own = [b.clone() for b in bufs]
    for b in bufs:
        dist.all_reduce(b, dist.ReduceOp.SUM)
        b.div_(dist.get_world_size())
    try:
        yield
    finally:
        for b, o in zip(bufs, own):
            b.copy_(o)


def average_gradients(params, extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """p.grad averaged over ranks for every p in params, in one all-reduce of a flat buffer; `extra`
    (a few scalars) rides along and comes back summed over ranks."""
    params = [p for p in params if p.grad is not None]
    parts = [p.grad.reshape(-1) for p in params] + ([extra.reshape(-1).to(params[0].grad.dtype)] if extra is not None else [])
    flat = torch.cat(parts)
    dist.all_reduce(flat, dist.ReduceOp.SUM)
    world = dist.get_world_size()
    i = 0
    for p in params:
        k = p.grad.numel()
        p.grad.copy_(flat[i:i + k].view_as(p.grad)).div_(world)
        i += k
    return flat[i:] if extra is not None else None


class _GlobalLogZeta(torch.autograd.Function):
    """log ζ̂ over every rank's samples from this rank's l [S_r] (see the module docstring)."""

    @staticmethod
    def forward(ctx, l):
        l64 = l.detach().double()
        m = l64.max() if l64.numel() else torch.tensor(-math.inf, dtype=torch.float64, device=l.device)
        s = torch.exp(l64 - m).sum() if torch.isfinite(m) else l64.new_zeros(())
        # one all-gather of three scalars per rank: its max, Σ exp(l - max) and count
        mine = torch.stack([m, s, torch.tensor(float(l64.numel()), dtype=torch.float64, device=l.device)])
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mine)                  # (all_gather_into_tensor: NCCL only)
        every = torch.stack(parts)
        M = every[:, 0].max()
        total = (every[:, 1] * torch.exp(every[:, 0] - M)).nan_to_num(0.0).sum() if torch.isfinite(M) else M.new_zeros(())
        lse = M + torch.log(total)
        ctx.save_for_backward(l, lse)
        return (lse - torch.log(every[:, 2].sum())).to(l.dtype)

    @staticmethod
    def backward(ctx, g):
        l, lse = ctx.saved_tensors
        # the global softmax weights of this rank's samples, times N: the ranks' gradients are averaged
        weights = torch.exp(l.double() - lse) if torch.isfinite(lse) else torch.zeros_like(l, dtype=torch.float64)
        return (g * weights * dist.get_world_size()).to(l.dtype)


def global_log_zeta(d_y: torch.Tensor, log_q: torch.Tensor, w: float) -> torch.Tensor:
    """Eq. 2 in log space over every rank's samples: log (1/Σ_r S_r) Σ_all exp(d/w - log q)."""
    return _GlobalLogZeta.apply(d_y / w - log_q)


def global_softmax(x: torch.Tensor) -> torch.Tensor:
    """softmax over every rank's x (detached; the Rényi generator loss's weights), this rank's share,
    times the world size N: the ranks' gradients are averaged (as in _GlobalLogZeta's backward)."""
    x = x.detach().double()
    M = x.max().clone()
    dist.all_reduce(M, dist.ReduceOp.MAX)
    e = torch.exp(x - M)
    total = e.sum().clone()
    dist.all_reduce(total, dist.ReduceOp.SUM)
    return (e / total).float() * dist.get_world_size()


def gather_objects(obj) -> list:
    """Every rank's obj, in rank order, on every rank (rank 0 saves them)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
