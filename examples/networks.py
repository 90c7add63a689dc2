"""Small versions of the networks flow and consistency models run, written as their authors write
them (in-place adds, chunk(6), grouped resampling convolutions, einsum attention), for the JVP
engine's tests, benchmarks and examples/meanflow.py:

- `DiT`: a Diffusion Transformer with adaLN-Zero (Peebles & Xie 2023) and MeanFlow's two time
  inputs (t, r): patch embedding, sinusoidal time embeddings, LayerNorm without affine, qk-RMSNorm,
  F.scaled_dot_product_attention, a GELU(tanh) MLP, chunk(6) modulation, unpatchify.
- `SongUNet`: an EDM-style UNet (Karras et al. 2022, `training/networks.py`): GroupNorm, SiLU, a
  positional time embedding (`ger`, cos/sin), `x.add_` residuals, skip concatenation, attention at
  the low resolution, down and up sampling by average pooling / stride-2 grouped convolution and
  nearest / bilinear upsampling / grouped transposed convolution.
- `ResidualMLP`: free-form flows' residual MLP (h + W2 σ(W1 σ(h))).
- `TwoHeads`: a module with two outputs and an aux value (the has_aux contract).

`attention="math"` writes attention out as softmax(q kᵀ/√d) v: the reference for the SDPA rule and
what the PyTorch providers run (torch 2.14.1 has no forward-mode rule for SDPA on the CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention(q, k, v, kind: str):
    """q, k, v [B, heads, L, d] -> [B, heads, L, d]: SDPA, or the same math written out."""
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if kind != "math":
        raise ValueError(f"attention={kind!r}: choose 'sdpa' or 'math'")
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoidal embedding: t [B] -> [B, dim] = [cos(t f); sin(t f)], f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---------------------------------------------------------------------------------------------
# DiT with adaLN-Zero
# ---------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn: str, qk_norm: bool):
        super().__init__()
        self.heads, self.attn = heads, attn
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c):
        # x [B, N, D], c [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        B, N, D = x.shape
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(self.q_norm(q), self.k_norm(k), v, self.attn)            # [B, heads, N, d]
        x = x + gate_msa.unsqueeze(1) * self.proj(a.transpose(1, 2).reshape(B, N, D))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class DiT(nn.Module):
    """u(z, t, r): z [B, C, H, W], t and r [B] -> [B, C, H, W] (MeanFlow's average velocity).
    `num_classes` > 0 adds a label embedding; labels are closed over by the caller
    (forward(z, t, r, y))."""

    def __init__(self, image=(1, 32, 32), patch=2, width=128, depth=4, heads=4, attn="sdpa", qk_norm=True,
                 num_classes=0, zero_init=True):
        super().__init__()
        C, H, W = image
        self.image, self.patch, self.width = image, patch, width
        self.x_embed = nn.Conv2d(C, width, patch, patch)
        n = (H // patch) * (W // patch)
        self.register_buffer("pos_embed", self._pos_embed(H // patch, W // patch, width), persistent=False)
        self.t_embed, self.r_embed = TimestepEmbedder(width), TimestepEmbedder(width)
        self.y_embed = nn.Embedding(num_classes, width) if num_classes else None
        self.blocks = nn.ModuleList([DiTBlock(width, heads, attn, qk_norm) for _ in range(depth)])
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_final = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch * patch * C)
        assert self.pos_embed.shape == (n, width)
        if zero_init:                                 # adaLN-Zero: each block starts as the identity
            for m in [b.adaLN_modulation[-1] for b in self.blocks] + [self.adaLN_final[-1], self.out]:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _pos_embed(h, w, dim):
        """2-D sin-cos position embedding [h·w, dim] (fixed)."""
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        return torch.cat([timestep_embedding(gy.flatten(), dim // 2), timestep_embedding(gx.flatten(), dim // 2)], 1)

    def forward(self, z, t, r, y=None):
        B = z.shape[0]
        C, H, W = self.image
        p = self.patch
        x = self.x_embed(z).flatten(2).transpose(1, 2) + self.pos_embed           # [B, N, D]
        c = self.t_embed(t) + self.r_embed(t - r)                                 # MeanFlow: (t, t - r)
        if self.y_embed is not None and y is not None:
            c = c + self.y_embed(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.adaLN_final(c).chunk(2, dim=1)
        x = self.out(modulate(self.norm_final(x), shift, scale))                 # [B, N, p·p·C]
        x = x.reshape(B, H // p, W // p, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, H, W)


# ---------------------------------------------------------------------------------------------
# SongUNet (EDM), small
# ---------------------------------------------------------------------------------------------
class Conv2d(nn.Module):
    """EDM's Conv2d: a convolution with optional 2x up or down sampling first. resample:
    "filter" (EDM: a grouped [1, 1] transposed convolution up, a grouped [1, 1]/4 stride-2
    convolution down), "interp" (nearest up, average pooling down) or "bilinear" (bilinear up,
    a stride-2 convolution down)."""

    def __init__(self, cin, cout, kernel, up=False, down=False, resample="filter"):
        super().__init__()
        self.up, self.down, self.resample = up, down, resample
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) / math.sqrt(cin * kernel * kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(cout)) if kernel else None
        self.register_buffer("resample_filter", torch.ones(1, 1, 2, 2), persistent=False)

    def forward(self, x):
        C = x.shape[1]
        if self.up:
            if self.resample == "filter":
                f = self.resample_filter.tile([C, 1, 1, 1])
                x = F.conv_transpose2d(x, f, groups=C, stride=2)
            else:
                x = F.interpolate(x, scale_factor=2, mode="nearest" if self.resample == "interp" else "bilinear")
        if self.down:
            if self.resample == "filter":
                f = self.resample_filter.tile([C, 1, 1, 1]) / 4
                x = F.conv2d(x, f, groups=C, stride=2)
            else:
                x = F.avg_pool2d(x, 2)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
            x = x.add_(self.bias.reshape(1, -1, 1, 1))
        return x


class UNetBlock(nn.Module):
    def __init__(self, cin, cout, emb, up=False, down=False, attention=False, heads=1, groups=4, dropout=0.0,
                 resample="filter", attn="math"):
        super().__init__()
        self.cout, self.heads, self.attn = cout, heads if attention else 0, attn
        self.skip_scale = 2 ** -0.5
        self.norm0 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down, resample=resample)
        self.affine = nn.Linear(emb, 2 * cout)                      # adaptive scale
        self.norm1 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = dropout
        self.conv1 = Conv2d(cout, cout, 3)
        self.skip = Conv2d(cin, cout, 1 if (cin != cout or up or down) else 0, up=up, down=down, resample=resample) \
            if (cin != cout or up or down) else None
        if attention:
            self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
            self.qkv = Conv2d(cout, 3 * cout, 1)
            self.proj = Conv2d(cout, cout, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        scale, shift = params.chunk(chunks=2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale
        if self.heads:
            B, C, H, W = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(B, self.heads, C // self.heads, 3, H * W).unbind(3)
            # [B, heads, d, HW] -> [B, heads, HW, d]
            a = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), self.attn)
            x = self.proj(a.transpose(-1, -2).reshape(B, C, H, W)).add_(x)
            x = x * self.skip_scale
        return x


class SongUNet(nn.Module):
    """u(x, t, r): x [B, C, R, R], t and r [B] -> [B, C, R, R]. Two levels (R and R/2), attention at
    R/2, skip concatenation in the decoder. `resample` as in Conv2d."""

    def __init__(self, image=(1, 16, 16), channels=32, mult=(1, 2), emb=64, heads=1, groups=4, dropout=0.0,
                 resample="filter", attn="math"):
        super().__init__()
        C, R, _ = image
        self.image, self.emb = image, emb
        self.map_layer0 = nn.Linear(emb // 2, emb)                    # two time inputs: [emb(t); emb(t - r)]
        self.map_layer1 = nn.Linear(emb, emb)
        kw = dict(emb=emb, groups=groups, dropout=dropout, resample=resample, attn=attn, heads=heads)
        c0, c1 = channels * mult[0], channels * mult[1]
        self.conv_in = Conv2d(C, c0, 3)
        self.enc0 = UNetBlock(c0, c0, **kw)
        self.down = UNetBlock(c0, c0, down=True, **kw)
        self.enc1 = UNetBlock(c0, c1, attention=True, **kw)
        self.mid = UNetBlock(c1, c1, attention=True, **kw)
        self.dec1 = UNetBlock(c1 + c1, c1, attention=True, **kw)
        self.up = UNetBlock(c1, c1, up=True, **kw)
        self.dec0 = UNetBlock(c1 + c0, c0, **kw)
        self.out_norm = nn.GroupNorm(groups, c0, eps=1e-6)
        self.conv_out = Conv2d(c0, C, 3)

    def time_embedding(self, t, r):
        """EDM's PositionalEmbedding of t and t - r (`ger`, then [cos; sin]) through two Linear + SiLU."""
        n = self.emb // 8
        freqs = (1 / 10000) ** (torch.arange(n, dtype=t.dtype, device=t.device) / n)
        e = [torch.ger(s, freqs) for s in (t, t - r)]
        e = torch.cat([torch.cat([a.cos(), a.sin()], dim=1) for a in e], dim=1)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(e))))

    def forward(self, x, t, r):
        emb = self.time_embedding(t, r)
        h0 = self.enc0(self.conv_in(x), emb)
        h1 = self.enc1(self.down(h0, emb), emb)
        h = self.mid(h1, emb)
        h = self.dec1(torch.cat([h, h1], dim=1), emb)
        h = self.dec0(torch.cat([self.up(h, emb), h0], dim=1), emb)
        return self.conv_out(F.silu(self.out_norm(h)))


# ---------------------------------------------------------------------------------------------
# Free-form flows' residual MLP, and a module with two outputs and aux
# ---------------------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """x [B, n] -> [B, n]: a Linear in, `blocks` residual blocks h + W2 σ(W1 σ(h)), a Linear out."""

    def __init__(self, n=16, width=64, blocks=2, activation=nn.SiLU):
        super().__init__()
        self.inp, self.outp = nn.Linear(n, width), nn.Linear(width, n)
        self.blocks = nn.ModuleList([nn.Sequential(activation(), nn.Linear(width, width), activation(),
                                                   nn.Linear(width, width)) for _ in range(blocks)])

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.outp(h)


class TwoHeads(nn.Module):
    """(x, s) -> ((mean, log_scale), aux): two outputs of one trunk, and with has_aux an aux dict
    (a statistic of the features, returned as it is, without tangents)."""

    def __init__(self, n=6, width=32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, width), nn.GELU())
        self.mean, self.log_scale = nn.Linear(width, n), nn.Linear(width, n)

    def forward(self, x, s):
        h = self.trunk(x) * s[:, None]
        return (self.mean(h), self.log_scale(h).clamp(-5, 5)), {"feature_norm": h.norm(dim=-1).mean()}
