"""Pictures written into a run folder: generated samples over the data, and log-densities (Fig. 1)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def plane_grid(lo: float, hi: float, res: int = 400):
    """Cell centres of a res x res grid on [lo, hi]², as points [res², 2], plus the cell area."""
    h = (hi - lo) / res
    c = lo + h * (torch.arange(res, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(c, c, indexing="xy")
    return torch.stack([gx.flatten(), gy.flatten()], 1), h * h


@torch.no_grad()
def energy_on_grid(energy_fn, lo, hi, res=400, device="cpu", chunk=65536):
    """energy_fn(x) on the grid -> [res, res] (float64, row = y, column = x), and the cell area."""
    pts, area = plane_grid(lo, hi, res)
    vals = torch.cat([energy_fn(p.to(device=device, dtype=torch.float32)).double().cpu()
                      for p in pts.split(chunk)])
    return vals.view(res, res), area


def save_samples(path, samples, data, title=""):
    """Generated points (blue) over data points (grey) and the mixture means (red)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    x = data.sample(len(samples), torch.Generator().manual_seed(0))
    ax.scatter(x[:, 0], x[:, 1], s=2, c="0.6", label="data", linewidths=0)
    s = samples.detach().cpu()
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", alpha=0.6, label="generator", linewidths=0)
    ax.scatter(data.means[:, 0], data.means[:, 1], s=8, c="tab:red", marker="x", label="means")
    lo, hi = data.extent(1.0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    # below the axes: inside them, any corner of the plot can hold a mode (the grid's (4, 4) was hidden)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=7, markerscale=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_density(path, energy_fn, data, device="cpu", res=400, log_zeta=None, title=""):
    """Fig. 1: the true log-density beside the model's, log P_D = D/w - log ζ.

    With `log_zeta=None` the model's energy is normalised by quadrature on the plotted grid (which
    covers every mode), so both panels are log-densities on one colour scale.
    """
    lo, hi = data.extent(1.0)
    e, area = energy_on_grid(energy_fn, lo, hi, res, device)
    lz = torch.logsumexp(e.flatten(), 0).item() + math.log(area) if log_zeta is None else log_zeta
    model = e - lz
    truth = data.log_prob(plane_grid(lo, hi, res)[0]).view(res, res)
    vmax = float(truth.max())
    vmin = vmax - 30.0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, img, name in ((axes[0], truth, "true log p(x)"),
                          (axes[1], model, "model log P_D(x) = D(x)/w - log ζ" +
                           (" (ζ by quadrature)" if log_zeta is None else ""))):
        im = ax.imshow(img.clamp(min=vmin).numpy(), origin="lower", extent=(lo, hi, lo, hi),
                       vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lz


CURVE_COLUMNS = 6                                  # curves.png's panels a row


def save_curves(path, rows, keys=("hq", "ess", "log_zeta", "fold"), references=None, phase_at=None):
    """Training curves from metrics.jsonl rows; references {key: (value, label)}: dashed lines;
    phase_at: the step where the catch-up phase starts (Config.catch_up), a dotted vertical line."""
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return
    cols = min(len(keys), CURVE_COLUMNS)
    rows_ = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 3.2 * rows_), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        if references and k in references:
            value, label = references[k]
            ax.axhline(value, color="k", lw=1, ls="--", label=label)
            ax.legend(fontsize=7)
        if phase_at is not None:
            ax.axvline(phase_at, color="grey", lw=1, ls=":")
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_image_grid(path, images_u8, title="", nrow=8):
    """A grid of uint8 images [N, C, H, W] (torchvision.utils.make_grid) with a title."""
    from torchvision.utils import make_grid
    grid = make_grid(images_u8, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(6, 6.4))
    ax.imshow(grid[:, :, 0] if images_u8.shape[1] == 1 else grid, cmap="gray" if images_u8.shape[1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_zeta_convergence(path, curves: dict, title: str, reference: float | None = None):
    """Fig. 2: log ζ̂ against S, one curve per proposal: curves = {label: (Ss, means, stds, colour)};
    `reference` (a quadrature) as a dashed line, with the y range around it."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (Ss, means, stds, color) in curves.items():
        ax.errorbar(Ss, means, yerr=stds, label=label, color=color, marker="o", ms=3, capsize=2)
    if reference is not None:
        ax.axhline(reference, color="k", lw=1, ls="--", label="quadrature")
        ax.set_ylim(reference - 15, reference + 5)
    ax.set_xscale("log")
    ax.set_xlabel("importance samples S")
    ax.set_ylabel("log ζ̂")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_energy_hist(path, e_train, e_test, labels, title):
    """Fig. 3: histograms (densities, 60 shared bins) of D(x)/w on training against held-out data."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.linspace(float(min(e_train.min(), e_test.min())), float(max(e_train.max(), e_test.max())), 60)
    ax.hist(e_train, bins, alpha=0.6, density=True, label=labels[0])
    ax.hist(e_test, bins, alpha=0.6, density=True, label=labels[1])
    ax.set_xlabel("energy D(x)/w")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_ais_convergence(path, ladder: dict, baselines: dict, title: str):
    """The test NLL's bracket against the number of AIS steps K: per base, AIS's NLL (a lower bound
    in expectation, solid) and RAISE's (an upper bound of the annealing model's, dashed) on RAISE's
    images, and where given ("ais_all") AIS's on the whole test split (dotted), in bits/dim on one
    axis; ladder = {base: {"K": [...], "ais": [...], "raise": [...], "ais_all": [...]}}; baselines =
    {label: bits/dim over the whole split} as horizontal lines: compare them with "ais_all" (RAISE's
    few images may be easier than the split, 0.11 bits/dim on the Fashion-MNIST defaults)."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    for (base, row), color in zip(ladder.items(), colors):
        name = "from p_0" if base == "base" else f"{base} base"            # "base": D's own base measure
        few = " (RAISE's images)" if row.get("raise") else ""
        ax.plot(row["K"], row["ais"], color=color, marker="o", ms=3, label=f"AIS, {name}{few}")
        if row.get("raise"):
            ax.plot(row["K"], row["raise"], color=color, marker="s", ms=3, ls="--", label=f"RAISE, {name}")
        if row.get("ais_all"):
            ax.plot(row["K"], row["ais_all"], color=color, marker="^", ms=3, ls=":", label=f"AIS, {name} (all test images)")
    # thin grey horizontal lines, one pattern each, none of them the dotted ":" of "ais_all"
    styles = ("-.", (0, (6, 3)), "-", (0, (3, 1, 1, 1, 1, 1)))
    for (label, v), ls, grey in zip(baselines.items(), styles, ("0.2", "0.45", "0.3", "0.55")):
        ax.axhline(v, color=grey, lw=1, ls=ls, label=f"{label} ({v:.2f}, all test images)")
    ax.set_xscale("log")
    ks = sorted({k for row in ladder.values() for k in row["K"]})
    ax.set_xticks(ks, [str(k) for k in ks])                          # the ladder's K, not 3×10², 4×10², ...
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("AIS steps K")
    ax.set_ylabel("test NLL, bits/dim")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
