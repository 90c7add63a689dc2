"""mlp_jvp: a stack of linear_jvp layers (an MLP and its tangents) as ONE autograd node.

    h_0 = x,  h_dot_0 = x_dot                                   x: [M, K0], x_dot: [T, M, K0]
    h_i, h_dot_i = linear_jvp(h_{i-1}, h_dot_{i-1}, W_i, b_i, σ_i)    σ_i = activation, the last = last_activation
    -> y = h_L [M, N_L],  y_dot = h_dot_L [T, M, N_L]

Same math, shapes and gradients as chaining `linear_jvp` (its docstring has the formulas). What it
changes is the bookkeeping: the torch path records one autograd node for the whole stack instead of
one per layer, and its backward hands each layer's [gx; gx_dot] = GA W (one [1+T, M, K] buffer) to
the layer below as that layer's [gy; gyd] with no stacking copy. On the 2D generator step (three
layers, B = 512, width 256, T = 2) one node instead of three saved 0.23 ms of 4.71 ms in a scratch
timing (`benchmarks/results/HISTORY.md`, "What changed on 11-29 (08:xx)", has the whole change's
measurements). Each layer's forward and backward are linear_jvp's own (`forward_layer`,
`backward_layer`): the reference stays the single source of the math.

On the Triton backend the layers are chained `linear_jvp` calls (one Function each): a layer's
forward is one kernel launch either way.
"""
from __future__ import annotations

import torch

from .backend import first_order, use_triton_dot
from .linear_jvp import ACTIVATIONS, backward_layer, check_inputs, forward_layer, linear_jvp


def _activations(n_layers, activation, last_activation):
    return [activation] * (n_layers - 1) + [last_activation]


def check_mlp(x, x_dot, weights, biases, activation, last_activation, negative_slope):
    """Raise ValueError naming the bad layer; return (lead_shape, M, T, biases as a list)."""
    if len(weights) == 0:
        raise ValueError("weights is empty: an MLP needs at least one layer")
    if biases is None:
        biases = [None] * len(weights)
    if len(biases) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(biases)} biases (use None for a layer without one)")
    lead, M, K, N, T = check_inputs(x, x_dot, weights[0], biases[0], activation, negative_slope)
    for i in range(1, len(weights)):
        W = weights[i]
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[1] != weights[i - 1].shape[0]:
            raise ValueError(f"weights[{i}] must be [N, K={weights[i - 1].shape[0]}] (weights[{i - 1}] is "
                             f"{tuple(weights[i - 1].shape)}), got "
                             f"{tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__}")
        b = biases[i]
        if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (W.shape[0],)):
            raise ValueError(f"biases[{i}] must be [N={W.shape[0]}] or None, got "
                             f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
        for name, t in ((f"weights[{i}]", W), (f"biases[{i}]", b)):
            if t is not None and (t.dtype != x.dtype or t.device != x.device):
                raise ValueError(f"{name} is {t.dtype} on {t.device}; x is {x.dtype} on {x.device}")
    if last_activation not in ACTIVATIONS:
        raise ValueError(f"last_activation={last_activation!r} is not supported; choose one of {ACTIVATIONS}")
    return lead, M, T, list(biases)


class _MLPJVPTorch(torch.autograd.Function):
    """forward(x [M, K0], x_dot [T, M, K0], acts, negative_slope, n_layers, *weights, *biases)."""

    @staticmethod
    def forward(ctx, x, x_dot, acts, negative_slope, n_layers, *params):
        weights, biases = params[:n_layers], params[n_layers:]
        h, h_dot = x, x_dot
        saved, outs = [], []
        for W, b, act in zip(weights, biases, acts):
            out, s = forward_layer(h, h_dot, W, b, act, negative_slope)   # out = [y; y_dot] [1+T, M, N]
            saved.append(s)
            outs.append(out)
            h, h_dot = out[0], out[1:]          # views of one buffer: the next layer stacks them free
        # per layer: (x, x_dot, h, pre) as forward_layer returns them, and the layer's out
        flat = [t for s, o in zip(saved, outs) for t in (*s, o)]
        ctx.save_for_backward(*flat, *params)
        ctx.acts, ctx.negative_slope, ctx.n_layers = acts, negative_slope, n_layers
        return h, h_dot

    @staticmethod
    @first_order       # a create_graph=True backward through it raises, see tests
    def backward(ctx, gy, gyd):
        L = ctx.n_layers
        tensors = ctx.saved_tensors
        flat, params = tensors[:5 * L], tensors[5 * L:]
        weights, biases = params[:L], params[L:]
        needs = ctx.needs_input_grad
        need_w, need_b = needs[5:5 + L], needs[5 + L:]
        grads_w, grads_b = [None] * L, [None] * L
        for i in reversed(range(L)):
            *s, out = flat[5 * i:5 * i + 5]
            need_in = i > 0 or needs[0] or needs[1]
            gh, grads_w[i], grads_b[i] = backward_layer(gy, gyd, s, weights[i], biases[i], out, ctx.acts[i],
                                                        ctx.negative_slope, (need_in, need_w[i], need_b[i]))
            if gh is not None:
                gy, gyd = gh[0], gh[1:]         # [gx; gx_dot], one buffer: the layer below's [gy; gyd]
        gx, gxd = (gy, gyd) if needs[0] or needs[1] else (None, None)
        return (gx, gxd, None, None, None, *grads_w, *grads_b)


def mlp_jvp_torch(x, x_dot, weights, biases=None, activation="tanh", last_activation="identity",
                  negative_slope=0.2):
    """The pure-PyTorch path; same contract as `mlp_jvp`."""
    lead, M, T, biases = check_mlp(x, x_dot, weights, biases, activation, last_activation, negative_slope)
    acts = _activations(len(weights), activation, last_activation)
    if x.dim() == 2:       # no reshape/view autograd nodes when there is nothing to reshape
        return _MLPJVPTorch.apply(x, x_dot, acts, float(negative_slope), len(weights), *weights, *biases)
    K, N = x.shape[-1], weights[-1].shape[0]
    y, yd = _MLPJVPTorch.apply(x.reshape(M, K), x_dot.reshape(T, M, K), acts, float(negative_slope),
                               len(weights), *weights, *biases)
    return y.view(*lead, N), yd.view(T, *lead, N)


def mlp_jvp(x, x_dot, weights, biases=None, activation="tanh", last_activation="identity", negative_slope=0.2):
    """An MLP and its tangents: layer i is act_i(h W_iᵀ + b_i), act = `activation` for every layer
    but the last, which uses `last_activation`. x: [..., K0]; x_dot: [T, ..., K0]; weights[i]:
    [N_i, N_{i-1}] as in nn.Linear; biases: a list of [N_i] or None entries, or None.
    Returns y [..., N_L] and y_dot [T, ..., N_L], differentiable in x, x_dot, weights and biases.
    Triton on CUDA (chained linear_jvp launches), one autograd node on the torch path."""
    if use_triton_dot(x):
        *_, biases = check_mlp(x, x_dot, weights, biases, activation, last_activation, negative_slope)
        h, h_dot = x, x_dot
        for W, b, act in zip(weights, biases, _activations(len(weights), activation, last_activation)):
            h, h_dot = linear_jvp(h, h_dot, W, b, act, negative_slope)
        return h, h_dot
    return mlp_jvp_torch(x, x_dot, weights, biases, activation, last_activation, negative_slope)
