"""python -m owf.train: train a One-way Flow (or a WGAN baseline) on 2D data or images.

    python -m owf.train                       # ring, CPU, a few minutes; prints the final metrics
    python -m owf.train --data grid --out runs/grid
    python -m owf.train --data fashion-mnist  # the DCGAN one-way flow on Fashion-MNIST
    python -m owf.train --resume runs/grid    # continue exactly where it stopped

One loop for every kind of data; what differs (batches, metrics, pictures) is owf.tasks'. The run
folder holds config.json, metrics.jsonl (one line per --log-every), metrics.json (final),
samples.png, curves.png, checkpoint.pt, and density.png in 2D.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from owf_kernels import keep_freed_memory
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_atomic
from .config import RESUMABLE, Config, parse_args
from .losses import (data_kernel_proposal, discriminator_loss_eq16, effective_sample_size, generator_loss_renyi,
                     gradient_penalty, oriented_logdet, wgan_discriminator_loss_eq4, wgan_generator_loss)
from .plots import save_curves
from .tasks import make_task, mode_metrics  # noqa: F401  (mode_metrics: owf.train's name for it)


class NonFiniteLoss(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def build(cfg: Config, device: torch.device, progress: bool = False):
    """The task (data, metrics, pictures), networks, optimisers and the one random stream every
    sample is drawn from."""
    task = make_task(cfg, progress)
    torch.manual_seed(cfg.seed)                        # parameter initialisation
    G, D = task.networks(cfg)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return task, G, D, G_ema, opt_g, opt_d, gen


def restore(state: dict, G, D, G_ema, opt_g, opt_d, task=None):
    """Load a checkpoint's networks, optimiser states and (given the task) data stream into
    build()'s objects (not its step or random stream: a resume restores those,
    owf.experiments.continue_run reseeds)."""
    for obj, key in ((G, "G"), (D, "D"), (G_ema, "G_ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
        obj.load_state_dict(state[key])
    if task is not None:
        task.load_state_dict(state.get("task", {}))


def train_step(cfg: Config, task, G, D, G_ema, opt_g, opt_d, gen, g_params, device):
    """One optimisation step: n_critic discriminator updates, then one generator update.
    Returns (loss_d, loss_g, D(x), D(y), log q(y)) of the last discriminator update."""
    is_owf = cfg.loss == "owf"
    log_q = logdet = None
    # ---- discriminator: n_critic steps; the last one's generator batch serves the G step
    for i in range(cfg.n_critic):
        keep = i == cfg.n_critic - 1
        with torch.set_grad_enabled(keep):
            if is_owf:
                y, log_q, logdet, *sign = G.sample_with_log_prob(cfg.samples, cfg.logdet, gen, cfg.orient)
            else:
                y = G(G.noise(cfg.samples, gen))
        x = task.batch(cfg.batch, gen, device)
        y_is, log_q_is = y.detach(), (log_q.detach() if is_owf else None)     # log ζ̂'s importance samples
        if is_owf and cfg.defensive > 0:       # the data kernel's samples join G's: one pooled estimate
            y_k, log_k = data_kernel_proposal(x, math.ceil(cfg.defensive * cfg.samples), gen)
            y_is, log_q_is = torch.cat([y_is, y_k]), torch.cat([log_q_is, log_k])
        d_x, d_is = D(torch.cat([x, y_is])).split([cfg.batch, len(y_is)])     # one pass
        d_y_d = d_is[:cfg.samples]                                            # G's samples' energies
        if is_owf:
            loss_d = discriminator_loss_eq16(d_x, d_is, log_q_is, cfg.w)
        else:
            loss_d = wgan_discriminator_loss_eq4(d_x, d_y_d)
            if cfg.loss == "wgan-gp":
                loss_d = loss_d + cfg.gp * gradient_penalty(D, x, y.detach(), gen)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if cfg.loss == "wgan":
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-cfg.clip, cfg.clip)

    # ---- generator: Eq. 17 (or the WGAN loss); gradients for G's parameters only
    d_y = D(y)
    if is_owf and cfg.orient:
        logdet = oriented_logdet(logdet, sign[0])     # log|det J| on the majority side, reflected on the other
    loss_g = generator_loss_renyi(d_y, logdet, log_q, cfg.w, cfg.g_alpha) if is_owf else wgan_generator_loss(d_y)
    for p, g in zip(g_params, torch.autograd.grad(loss_g, g_params)):
        p.grad = g.contiguous()       # fused Adam reads grads in the parameter's layout
    opt_g.step()
    if cfg.ema > 0:
        with torch.no_grad():
            torch._foreach_lerp_(list(G_ema.parameters()), g_params, 1.0 - cfg.ema)
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):     # BatchNorm's running statistics
                b_ema.copy_(b)
    return loss_d, loss_g, d_x, d_y_d, log_q


def prepare_run_dir(cfg: Config, overwrite: bool) -> Path:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"run folder {out} already exists: pass --resume {out} to continue it, "
                                  f"--overwrite to replace it, or --out to choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(cfg: Config | None = None, resume: str | None = None, overwrite: bool = False,
          overrides: dict | None = None, progress: bool = True, tune_cpu_allocator: bool = False) -> dict:
    """Run (or resume) training; returns the final metrics (also written to metrics.json).

    cfg: a new run's config, or resume: the folder of a run to continue exactly (then overrides may
    change the RESUMABLE fields). overwrite: replace an existing run folder. progress: the progress
    bar, and Ctrl-C saves and stops (a SIGINT handler for the duration of the call).
    tune_cpu_allocator: on CPU, call owf_kernels.keep_freed_memory(), which sets glibc's malloc to
    keep freed memory for reuse instead of returning it to the OS (about 0.4 ms saved per fresh
    1.5 MiB tensor on the 2D step). It is process-wide and stays after the call, so only the CLI
    turns it on."""
    # ---- config and run folder
    if resume:
        run = Path(resume)
        state = load_checkpoint(run)
        cfg = Config.from_saved(state["config"])
        bad = sorted(set(overrides or {}) - set(RESUMABLE))
        if bad:
            raise ValueError(f"--resume keeps the run's config; these cannot change: {bad} "
                             f"(changeable: {list(RESUMABLE)})")
        # a resumed run goes on to --steps unless told to stop earlier (--until)
        cfg = replace(cfg, **{"until": 0, **(overrides or {})}, out=str(run))
    else:
        state = None
        run = prepare_run_dir(cfg, overwrite)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu" and tune_cpu_allocator:
        keep_freed_memory()     # glibc: reuse freed tensors' pages instead of faulting in fresh ones (owf_kernels.cpu_malloc)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    # ---- task, models, optimisers, random stream
    task, G, D, G_ema, opt_g, opt_d, gen = build(cfg, device, progress)
    start, seconds = 0, 0.0
    rows_path = run / "metrics.jsonl"
    if state is not None:
        restore(state, G, D, G_ema, opt_g, opt_d, task)
        gen.set_state(state["rng"].to(gen.get_state().device))
        start, seconds = state["step"], state["seconds"]
        # keep the log consistent with the checkpoint: drop lines written after it
        rows = [json.loads(l) for l in rows_path.read_text().splitlines()] if rows_path.exists() else []
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= start))
    g_params = list(G.parameters())
    G_eval = G_ema if cfg.ema > 0 else G          # what evaluation and pictures sample from
    stop = cfg.until or cfg.steps
    is_owf = cfg.loss == "owf"

    def checkpoint(step):
        save_atomic(dict(
            config=cfg.to_dict(), step=step, seconds=seconds + time.perf_counter() - t0,
            G=G.state_dict(), D=D.state_dict(), G_ema=G_ema.state_dict(),
            opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), rng=gen.get_state(), task=task.state_dict(),
            event_shape=list(G.event_shape)),
            run / "checkpoint.pt")

    # Ctrl-C: finish the current step, save, exit. A second Ctrl-C stops at once.
    interrupted = []
    prev_handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
    if progress:
        signal.signal(signal.SIGINT, on_sigint)

    bar = tqdm(total=stop, initial=start, disable=not progress, dynamic_ncols=True, mininterval=0.5)
    t0 = time.perf_counter()
    step = start
    last, final_ev = {}, None
    try:
        while step < stop and not interrupted:
            # ---- learning rates: linear decay to 0 over cfg.steps
            scale = 1.0 - step / cfg.steps if cfg.lr_decay else 1.0
            opt_d.param_groups[0]["lr"] = cfg.lr_d * scale
            opt_g.param_groups[0]["lr"] = cfg.lr_g * scale

            loss_d, loss_g, d_x, d_y_d, log_q = train_step(cfg, task, G, D, G_ema, opt_g, opt_d, gen, g_params, device)

            # ---- stop on a non-finite loss, keeping the last good checkpoint
            ld, lg = float(loss_d.detach()), float(loss_g.detach())
            if not (math.isfinite(ld) and math.isfinite(lg)):
                raise NonFiniteLoss(f"non-finite loss at step {step + 1}: loss_d={ld}, loss_g={lg}")
            step += 1
            bar.update(1)

            # ---- log: losses, log ζ̂, ESS, and the task's metrics (2D: modes, HQ; images: the classifier FID when due)
            if step % cfg.log_every == 0 or step == stop:
                ev = task.evaluate(G_eval, step, final=step == stop)
                if step == stop:
                    final_ev = ev                 # the run's final evaluation, made once
                last = dict(step=step, seconds=round(seconds + time.perf_counter() - t0, 2), loss_d=ld, loss_g=lg,
                            **{k: v for k, v in ev.items() if k not in task.summary_only}, lr_scale=scale)
                if is_owf:
                    last["log_zeta"] = float(loss_d.detach() + (d_x.detach() / cfg.w).mean())
                    last["ess"] = effective_sample_size(d_y_d, log_q, cfg.w)
                with open(rows_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
                shown = {k: v for k, v in last.items() if k in ("loss_d", "loss_g", "log_zeta", "ess") + task.progress_keys}
                bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()}, refresh=False)
            if step % cfg.sample_every == 0:
                task.pictures(run, G_eval, D, cfg, dict(last, step=step))
            if step % cfg.ckpt_every == 0:
                checkpoint(step)
    except NonFiniteLoss as e:
        kept = run / "checkpoint.pt"
        msg = f"{e}. " + (f"The last good checkpoint is kept in {kept}." if kept.exists()
                          else "No checkpoint had been written yet.")
        raise NonFiniteLoss(msg) from None
    finally:
        bar.close()
        if progress:
            signal.signal(signal.SIGINT, prev_handler)

    # ---- save, pictures, final metrics
    checkpoint(step)
    ev = final_ev if final_ev is not None else task.evaluate(G_eval, step, final=True)
    metrics = dict(data=cfg.data, loss=cfg.loss, seed=cfg.seed, out=str(run), steps=step,
                   seconds=round(seconds + time.perf_counter() - t0, 2),
                   finished=step >= cfg.steps, interrupted=bool(interrupted),
                   **{k: ev[k] for k in task.summary_keys if k in ev})
    for k in ("loss_d", "loss_g", "log_zeta", "ess"):
        if k in last:
            metrics[k] = last[k]
    task.pictures(run, G_eval, D, cfg, dict(metrics, step=step))
    if rows_path.exists():
        save_curves(run / "curves.png", [json.loads(l) for l in rows_path.read_text().splitlines()], task.curve_keys)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv=None) -> int:
    given, opts = parse_args(argv)
    try:
        if opts["resume"]:
            if opts["dry_run"]:
                state = load_checkpoint(opts["resume"])
                print(json.dumps(dict(state["config"], **given), indent=2))
                return 0
            metrics = train(resume=opts["resume"], overrides=given, tune_cpu_allocator=True)
        else:
            cfg = Config(**given)
            if opts["dry_run"]:
                print(json.dumps(cfg.to_dict(), indent=2))
                return 0
            metrics = train(cfg, overwrite=opts["overwrite"], tune_cpu_allocator=True)
    except (ValueError, FileExistsError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, NonFiniteLoss) else 1
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_mode", "class_shares")}))
    if metrics["interrupted"]:
        print(f"interrupted at step {metrics['steps']}; continue with: python -m owf.train --resume "
              f"{metrics['out']}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
