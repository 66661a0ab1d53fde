"""ONNX Runtime's fused transformer operators (the ``com.microsoft`` domain) as torch functions for ``--optimize O2``.

Each function computes in PyTorch what the operator computes (so a trace has the right shapes and values) and
its ``symbolic`` writes the one operator into the graph, as ONNX Runtime's contrib operator reference defines it.
Only the TorchScript-based exporter honours ``symbolic``; the graphs run on ONNX Runtime only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DOMAIN = "com.microsoft"
CUSTOM_OPSETS = {DOMAIN: 1}


class FusedAttention(torch.autograd.Function):
    """``Attention``: x ``[B,T,D]``, weight ``[D,3A]`` (q, k, v columns), bias ``[3A]`` -> ``[B,T,A]``:
    multi-head self-attention of ``heads`` heads of ``A/heads`` each (``A = D`` unless heads were pruned) with scale
    ``1/sqrt(A/heads)`` and no mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        query, key, value = (x @ weight + bias).reshape(batch, length, 3 * heads, -1).transpose(1, 2).split(heads, 1)
        attended = F.scaled_dot_product_attention(query, key, value)  # [B, H, T, A/H]
        return attended.transpose(1, 2).reshape(batch, length, -1)

    @staticmethod
    def symbolic(g, x, weight, bias, heads):
        attention_width = bias.type().varyingSizes()[0] // 3
        return _typed_like(x, g.op(f"{DOMAIN}::Attention", x, weight, bias, num_heads_i=heads), attention_width)


class SkipLayerNorm(torch.autograd.Function):
    """``SkipLayerNormalization``: ``s = x + skip + bias`` ``[B,T,D]``; returns ``(LayerNorm(s), s)``."""

    @staticmethod
    def forward(ctx, x, skip, gamma, beta, bias, eps: float):
        total = x + skip + bias
        return F.layer_norm(total, gamma.shape, gamma, beta, eps), total

    @staticmethod
    def symbolic(g, x, skip, gamma, beta, bias, eps):
        normalized, _mean, _inv_std, total = g.op(f"{DOMAIN}::SkipLayerNormalization", x, skip, gamma, beta, bias,
                                                  epsilon_f=eps, outputs=4)
        return _typed_like(x, normalized), _typed_like(x, total)


class BiasGelu(torch.autograd.Function):
    """``BiasGelu``: exact (erf) GELU of ``x + bias``."""

    @staticmethod
    def forward(ctx, x, bias):
        return F.gelu(x + bias)

    @staticmethod
    def symbolic(g, x, bias):
        return _typed_like(x, g.op(f"{DOMAIN}::BiasGelu", x, bias))


class QuickGelu(torch.autograd.Function):
    """``QuickGelu``: ``x * sigmoid(1.702 x)`` (OpenAI CLIP's activation)."""

    @staticmethod
    def forward(ctx, x):
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def symbolic(g, x):
        return _typed_like(x, g.op(f"{DOMAIN}::QuickGelu", x, alpha_f=1.702))


def _typed_like(x, value, last: int | None = None):
    """``value`` with ``x``'s type and shape (its last dimension ``last`` where given: Attention maps ``[B,T,D]``
    to ``[B,T,A]``); the exporter cannot infer a type for an operator outside ONNX."""
    if last is None:
        value.setType(x.type())
    else:
        value.setType(x.type().with_sizes([*x.type().varyingSizes()[:-1], last]))
    return value
