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

import contextlib
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

from .checkpoint import load_checkpoint, save_atomic, share_equal_tensors
from .cli import user_errors_exit
from .config import RESUMABLE, Config, parse_args
from .losses import (data_kernel_proposal, discriminator_loss_eq16, effective_sample_size,
                     exact_entropy_control_variate, generator_loss_renyi, gradient_penalty, log_zeta_hat,
                     oriented_logdet, uniform_box_proposal, wgan_discriminator_loss_eq4, wgan_generator_loss)
from .negatives import energy_penalty
from .plots import save_curves
from .distributed import averaged_buffers, average_gradients, broadcast_module, gather_objects, global_log_zeta
from .distributed import RANK_SEED_STRIDE, batch_norm_buffers, global_softmax, launched, local_device, process_group, rank_world
from .tasks import make_task, mode_metrics  # noqa: F401  (mode_metrics: owf.train's name for it)


class NonFiniteLoss(RuntimeError):
    pass


def build(cfg: Config, device: torch.device, progress: bool = False, saved_d: dict | None = None):
    """The task (data, metrics, pictures), networks, optimisers and the one random stream every
    sample is drawn from. saved_d: a checkpoint's D state on a resume, whose fitted base measure
    the image task takes instead of fitting it again (the mixture's EM takes minutes)."""
    task = make_task(cfg, progress)
    torch.manual_seed(cfg.seed)                        # parameter initialisation
    G, D = task.networks(cfg, saved_d)
    G, D = G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    # one random stream per rank, reproducible; rank 0's (and a single process's) is seeded with cfg.seed
    gen = torch.Generator(device=device).manual_seed(cfg.seed + RANK_SEED_STRIDE * rank_world()[0])
    return task, G, D, opt_g, opt_d, gen


ENTROPY_CHUNK = 112     # --entropy-samples: tangents per pass of the exact log-det (n = 784: 7 passes)


def restore(state: dict, G, D, opt_g, opt_d):
    """Load a checkpoint's networks and optimiser states into build()'s objects (not its step,
    random or data streams: a resume restores those, owf.experiments.continue_run reseeds)."""
    for obj, key in ((G, "G"), (D, "D"), (opt_g, "opt_g"), (opt_d, "opt_d")):
        obj.load_state_dict(state[key])


def train_step(cfg: Config, task, G, D, opt_g, opt_d, gen, g_params, device, flags=None, hold_d=False):
    """One optimisation step: n_critic discriminator updates, then one generator update. hold_d (the
    catch-up phase, Config.catch_up): D's loss is computed for the log but D is not updated, and
    P_D's persistent chains, which serve D's gradient alone, do not move.
    Returns (loss_d, loss_g, D(x), D(y), log q(y)) of the last discriminator update (y: log ζ̂'s first S
    importance samples, G's or p_0's), and on many
    processes (owf.distributed) the sums over ranks of (loss_d, loss_g, *flags), else None."""
    is_owf = cfg.loss == "owf"
    log_q = logdet = k = None
    world = rank_world()[1]
    # on many processes, one log ζ̂ and one Rényi softmax over every rank's samples
    log_zeta_fn, softmax = (global_log_zeta, global_softmax) if world > 1 else (log_zeta_hat, None)
    # ---- discriminator: n_critic steps; the last one's generator batch serves the G step
    for i in range(cfg.n_critic):
        keep = i == cfg.n_critic - 1
        with torch.set_grad_enabled(keep):
            if is_owf:              # u is kept for the exact entropy's sub-batch
                y, log_q, logdet, *sign, u, k = G.sample_with_log_prob(cfg.samples, cfg.logdet, gen, cfg.orient,
                                                                        return_u=True)
            else:
                y = G(G.noise(cfg.samples, gen))
        x = task.batch(cfg.batch, gen, device)
        y_is, log_q_is = y.detach(), (log_q.detach() if is_owf else None)     # log ζ̂'s importance samples
        if is_owf and cfg.zeta_proposal == "base":
            # S draws of D's base measure p_0 instead of G's: q = p_0, so log w = D/w - log p_0 = f/w, the
            # network part alone (≤ 0 under the bounded head), with D's own log p_0 so that it cancels exactly
            y_is = task.base_samples(cfg.samples, gen, x)
            log_q_is = ((D.base_w / cfg.w) * D.log_base(y_is)).to(y_is.dtype)
        if is_owf and cfg.defensive > 0:       # the defensive proposal's samples join G's: one pooled estimate
            num = math.ceil(cfg.defensive * cfg.samples)
            if cfg.defensive_proposal == "uniform":
                y_k, log_k = uniform_box_proposal(x, num, gen)
            else:
                y_k, log_k = data_kernel_proposal(x, num, gen)
            y_is, log_q_is = torch.cat([y_is, y_k]), torch.cat([log_q_is, log_k])
        chains = getattr(task, "chains", None) if is_owf and not hold_d else None
        parts = [x, y_is] + ([chains.step(D, cfg.w)] if chains is not None else [])    # + P_D's persistent chains
        with torch.set_grad_enabled(not hold_d):
            d_x, d_is, *d_c = D(torch.cat(parts)).split([len(p) for p in parts])      # one pass
        d_y_d = d_is[:cfg.samples]         # the first S importance samples' energies (G's, or p_0's draws)
        if is_owf:
            loss_d = discriminator_loss_eq16(d_x, d_is, log_q_is, cfg.w, log_zeta_fn)
            objective = loss_d
            chained = d_c and cfg.mcmc_weight > 0
            if chained:        # log ζ's gradient: (1 - λ) Eq. 16's + λ the chains' mean ∇D/w (owf.negatives)
                objective = loss_d + cfg.mcmc_weight * ((d_c[0] / cfg.w).mean() - (loss_d + (d_x / cfg.w).mean()))
            if chained or cfg.zeta_proposal == "base":
                # the network part f/w held near 0 on the data (and the chains): without it, under p_0's draws
                # alone, f sank everywhere at once (log ζ̂ -9 to -24,700 by step 1,100, docs/likelihood.md)
                objective = objective + energy_penalty(D, cfg.w, [(d_x, x)] + ([(d_c[0], parts[2])] if chained else []),
                                                       cfg.energy_l2)
            if d_c:
                chains.energy_gap = ((d_c[0] - d_x.mean()) / cfg.w).mean().detach()     # read (synced) when logged
        else:
            loss_d = wgan_discriminator_loss_eq4(d_x, d_y_d)
            if cfg.loss == "wgan-gp":
                loss_d = loss_d + cfg.gp * gradient_penalty(D, x, y.detach(), gen)
            objective = loss_d
        if hold_d:
            continue
        opt_d.zero_grad(set_to_none=True)
        objective.backward()
        if world > 1:
            average_gradients(D.parameters())
        opt_d.step()
        if cfg.loss == "wgan":
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-cfg.clip, cfg.clip)

    # ---- generator: Eq. 17 (or the WGAN loss); gradients for G's parameters only
    # G's latent components matched to D's base mixture (Config.g_mixture): component k targets P_D's
    # share r_k P_D ∝ π_k p_0,k exp(f/w), r_k the base's posterior of k, whose energy is D + w log r_k.
    # Eq. 17 with it is w Σ_k π_k KL(q_k ‖ P_D,k) + const, the joint KL of (k, y), ≥ KL(q ‖ P_D),
    # and no component can leave its mode for another's; Eq. 16 above keeps q's exact marginal
    d_y = D.component_energy(y, k) if is_owf and k is not None else D(y)
    if is_owf and cfg.orient:
        logdet = oriented_logdet(logdet, sign[0])     # log|det J| on the majority side, reflected on the other
    if is_owf and cfg.entropy_samples:
        # Eq. 17 with its entropy from the exact log|det J| of K of the S samples (every direction of J,
        # the near-zero singular values too, which Eq. 9's log‖Jv‖ barely sees), as a control variate on
        # the S samples' estimate: -mean D(y) - w (mean_S logdet + mean_K (exact - logdet))
        logdet_k = G.exact_logdet_at_batch(u[:cfg.entropy_samples], u.detach(), chunk=ENTROPY_CHUNK)
        loss_g = -d_y.mean() - cfg.w * exact_entropy_control_variate(logdet, logdet_k)
    elif is_owf:
        loss_g = generator_loss_renyi(d_y, logdet, log_q, cfg.w, cfg.g_alpha, softmax)
    else:
        loss_g = wgan_generator_loss(d_y)
    for p, g in zip(g_params, torch.autograd.grad(loss_g, g_params)):
        p.grad = g.contiguous()       # fused Adam reads grads in the parameter's layout
    sums = None
    if world > 1:                     # the average, and the ranks' losses and flags summed in the same all-reduce
        extra = torch.cat([torch.stack([loss_d.detach(), loss_g.detach()]).float(),
                           (flags if flags is not None else torch.zeros(0)).float().to(loss_d.device)])
        sums = average_gradients(g_params, extra)
    opt_g.step()
    return loss_d, loss_g, d_x, d_y_d, (log_q_is[:cfg.samples] if is_owf else None), sums


def prepare_run_dir(cfg: Config, overwrite: bool) -> Path:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"run folder {out} already exists: pass --resume {out} to continue it, "
                                  f"--overwrite to replace it, or --out to choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def averaged_over_ranks(G, when: bool = True):
    """averaged_buffers(G) on many processes (every rank enters it), else nothing."""
    return averaged_buffers(G) if when and rank_world()[1] > 1 else contextlib.nullcontext()


def _on_rank0(fn):
    """fn() on rank 0 alone; its user error (if any) raised on every rank, so that none waits."""
    rank, world = rank_world()
    err = None
    if rank == 0:
        try:
            fn()
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            err = e
    if world > 1:
        import torch.distributed as dist
        box = [None if err is None else (type(err).__name__, str(err))]
        dist.broadcast_object_list(box, 0)
        if box[0] is not None and err is None:
            err = {"ValueError": ValueError, "FileExistsError": FileExistsError}.get(box[0][0], FileNotFoundError)(box[0][1])
    if err is not None:
        raise err


def train(cfg: Config | None = None, resume: str | None = None, overwrite: bool = False,
          overrides: dict | None = None, progress: bool = True, tune_cpu_allocator: bool = False) -> dict:
    """Run (or resume) training; returns the final metrics (also written to metrics.json).

    cfg: a new run's config, or resume: the folder of a run to continue exactly (then overrides may
    change the RESUMABLE fields). overwrite: replace an existing run folder. progress: the progress
    bar, and Ctrl-C saves and stops (a SIGINT handler for the duration of the call).
    tune_cpu_allocator: on CPU, call owf_kernels.keep_freed_memory(), which sets glibc's malloc to
    keep freed memory for reuse instead of returning it to the OS (about 0.4 ms saved per fresh
    1.5 MiB tensor on the 2D step). It is process-wide and stays after the call, so only the CLI
    turns it on.

    On many processes (torchrun; owf.distributed) every rank trains its shard, and rank 0 alone
    logs, draws and checkpoints; the checkpoint holds every rank's random and data streams."""
    rank, world = rank_world()
    lead = rank == 0
    # ---- config and run folder
    if resume:
        run = Path(resume)
        state = load_checkpoint(run)
        cfg = Config.from_saved(state["config"])
        bad = sorted(set(overrides or {}) - set(RESUMABLE))
        if bad:
            raise ValueError(f"--resume keeps the run's config; these cannot change: {bad} "
                             f"(changeable: {list(RESUMABLE)})")
        if state.get("world_size", 1) != world:
            raise ValueError(f"{run} was trained on {state.get('world_size', 1)} processes and is resumed on {world}: "
                             "resume it on as many (its random and data streams are per process)")
        # a resumed run goes on to --steps unless told to stop earlier (--until)
        cfg = replace(cfg, **{"until": 0, **(overrides or {})}, out=str(run))
    else:
        state = None
        run = Path(cfg.out)
        _on_rank0(lambda: prepare_run_dir(cfg, overwrite))
    device = local_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu" and tune_cpu_allocator:
        keep_freed_memory()     # glibc: reuse freed tensors' pages instead of faulting in fresh ones (owf_kernels.cpu_malloc)
    if lead:
        (run / "config.json").write_text(json.dumps(dict(cfg.to_dict(), world_size=world), indent=2) + "\n")

    # ---- task, models, optimisers, random streams (one per rank)
    task, G, D, opt_g, opt_d, gen = build(cfg, device, progress and lead, state["D"] if state is not None else None)
    if world > 1:
        for m in (G, D):
            broadcast_module(m)
    # the catch-up phase restarts G from its state at step 0 (with g_base: q = p_0), as build() made it
    g_start = ({k: v.clone() for k, v in G.state_dict().items()}
               if cfg.catch_up and (state is None or state["step"] <= cfg.steps) else None)
    start, seconds = 0, 0.0
    rows_path = run / "metrics.jsonl"
    if state is not None:
        restore(state, G, D, opt_g, opt_d)
        rngs, tasks = state.get("rngs", [state["rng"]]), state.get("tasks", [state.get("task", {})])
        gen.set_state(rngs[rank].to(gen.get_state().device))
        task.load_state_dict(tasks[rank])
        if "rank_buffers" in state:           # this rank's own running statistics (G holds their average)
            with torch.no_grad():
                for k, b in G.named_buffers():
                    if k in state["rank_buffers"][rank]:      # BatchNorm's (older checkpoints: every buffer)
                        b.copy_(state["rank_buffers"][rank][k])
        start, seconds = state["step"], state["seconds"]
        # keep the log consistent with the checkpoint: drop lines written after it
        if lead:
            rows = [json.loads(l) for l in rows_path.read_text().splitlines()] if rows_path.exists() else []
            rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= start))
    g_params = list(G.parameters())
    stop = cfg.until or cfg.steps + cfg.catch_up
    is_owf = cfg.loss == "owf"

    def checkpoint(step):
        rngs, tasks, bufs = [gen.get_state()], [task.state_dict()], None
        if world > 1:                 # every rank's streams and BatchNorm statistics (an exact resume)
            rngs, tasks = gather_objects(gen.get_state().cpu()), gather_objects(task.state_dict())
            bufs = gather_objects({k: b.cpu() for k, b in batch_norm_buffers(G)})
        with averaged_over_ranks(G):   # G as saved: the running statistics' average over ranks
            if lead:
                d_state = D.state_dict()
                save_atomic(dict(
                    config=cfg.to_dict(), step=step, seconds=seconds + time.perf_counter() - t0, world_size=world,
                    G=share_equal_tensors(G.state_dict(), d_state), D=d_state,
                    opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), rng=rngs[0], task=tasks[0],
                    **({"rngs": rngs, "tasks": tasks, "rank_buffers": bufs} if world > 1 else {}),
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

    bar = tqdm(total=stop, initial=start, disable=not (progress and lead), dynamic_ncols=True, mininterval=0.5)
    t0 = time.perf_counter()
    step = start
    last, final_ev = {}, None
    stopped = False                   # an interrupt on any rank (on many processes: agreed in the step's all-reduce)
    try:
        while step < stop and not stopped:
            # ---- learning rates: linear decay to 0 over cfg.steps; then the catch-up phase (Config.catch_up):
            # D held, G restarted at its step-0 state with a fresh Adam, at lr_G constant (a checkpoint at
            # step cfg.steps is before the restart: a resume there makes it)
            hold_d = step >= cfg.steps
            if step == cfg.steps and cfg.catch_up:
                G.load_state_dict(g_start)
                opt_g.state.clear()              # Adam's moments and step count start again
            scale = 1.0 if hold_d else 1.0 - step / cfg.steps
            opt_d.param_groups[0]["lr"] = 0.0 if hold_d else cfg.lr_d * scale
            opt_g.param_groups[0]["lr"] = cfg.lr_g * scale

            flags = torch.tensor([float(bool(interrupted))]) if world > 1 else None
            loss_d, loss_g, d_x, d_y_d, log_q, sums = train_step(cfg, task, G, D, opt_g, opt_d, gen, g_params, device,
                                                                 flags, hold_d)

            # ---- stop on a non-finite loss, keeping the last good checkpoint (on many processes:
            # the mean over ranks, which every rank sees, so that all stop together)
            if sums is None:
                ld, lg = float(loss_d.detach()), float(loss_g.detach())
                stopped = bool(interrupted)
            else:
                ld, lg = float(sums[0]) / world, float(sums[1]) / world
                stopped = float(sums[2]) > 0
            if not (math.isfinite(ld) and math.isfinite(lg)):
                raise NonFiniteLoss(f"non-finite loss at step {step + 1}: loss_d={ld}, loss_g={lg}")
            step += 1
            bar.update(1)

            # ---- log: losses, log ζ̂, ESS (rank 0's samples), and the task's metrics (2D: modes, HQ;
            # images: the classifier FID when due), of G with its running statistics averaged over ranks
            logging = step % cfg.log_every == 0 or step == stop
            with averaged_over_ranks(G, logging or step % cfg.sample_every == 0):
                if lead and logging:
                    ev = task.evaluate(G, step, final=step == stop)
                    if step == stop:
                        final_ev = ev                 # the run's final evaluation, made once
                    last = dict(step=step, seconds=round(seconds + time.perf_counter() - t0, 2), loss_d=ld, loss_g=lg,
                                **{k: v for k, v in ev.items() if k not in task.summary_only}, lr_scale=scale)
                    if is_owf:
                        last["log_zeta"] = float(loss_d.detach() + (d_x.detach() / cfg.w).mean())
                        last["ess"] = effective_sample_size(d_y_d, log_q, cfg.w)
                    if getattr(task, "chains", None) is not None and not hold_d:    # mean D/w on the chains minus on the data
                        last.update(**task.chains.diagnostics(), mcmc_energy_gap=float(task.chains.energy_gap))
                    with open(rows_path, "a") as f:
                        f.write(json.dumps(last) + "\n")
                    shown = {k: v for k, v in last.items()
                             if k in ("loss_d", "loss_g", "log_zeta", "ess") + task.progress_keys}
                    bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                    refresh=False)
                if lead and step % cfg.sample_every == 0:
                    task.pictures(run, G, D, cfg, dict(last, step=step))
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
    metrics = dict(data=cfg.data, loss=cfg.loss, seed=cfg.seed, out=str(run), steps=step,
                   seconds=round(seconds + time.perf_counter() - t0, 2), world_size=world,
                   finished=step >= cfg.steps + cfg.catch_up, interrupted=bool(interrupted) or stopped)
    if not lead:
        return metrics
    if world > 1:                     # the final evaluation sees what was saved: the running statistics' average
        G.load_state_dict(load_checkpoint(run)["G"])
    ev = final_ev if final_ev is not None else task.evaluate(G, step, final=True)
    metrics.update({k: ev[k] for k in task.summary_keys if k in ev})
    for k in ("loss_d", "loss_g", "log_zeta", "ess"):
        if k in last:
            metrics[k] = last[k]
    task.pictures(run, G, D, cfg, dict(metrics, step=step))     # (G holds the saved, averaged statistics)
    if rows_path.exists():
        save_curves(run / "curves.png", [json.loads(l) for l in rows_path.read_text().splitlines()], task.curve_keys,
                    task.curve_references(), phase_at=cfg.steps if cfg.catch_up else None)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


@user_errors_exit
def main(argv=None) -> int:
    given, opts = parse_args(argv)
    device = "auto"
    if launched():                    # torchrun: one process per rank (owf.distributed), on the run's device
        device = given.get("device") or (load_checkpoint(opts["resume"])["config"].get("device", "auto")
                                         if opts["resume"] else "auto")
    with process_group(device):
        return _run(given, opts)


def _run(given: dict, opts: dict) -> int:
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
    except NonFiniteLoss as e:        # the other user errors: user_errors_exit (exit 2)
        print(f"error: {e}", file=sys.stderr)
        return 1
    if rank_world()[0] != 0:
        return 130 if metrics["interrupted"] else 0
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_mode", "class_shares")}))
    if metrics["interrupted"]:
        print(f"interrupted at step {metrics['steps']}; continue with: python -m owf.train --resume "
              f"{metrics['out']}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
