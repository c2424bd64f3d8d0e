"""One hybrid-attention head of RMHHA: relative self-attention, channel attention, and their fusion.

Equations refer to Wang, Sanchez, Li, "Improving Face-Based Age Estimation with
Attention-Based Dynamic Patch Fusion", IEEE TIP 2022.

Open choices made here (numbered as in ``book/open_choices.md``, "choice N"):

2. c_K, c_V and the channel-attention bottleneck ratio are constructor arguments
   (``config.key_channels``, ``config.value_channels``, ``config.ca_reduction``); the
   bottleneck never goes below one unit.
3. Q, K, V and CA are all computed from the head's own input ``z`` (its channel slice).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionImpl = Literal["sdpa", "plain"]


def _relative_index(size: int, device: torch.device) -> Tensor:
    """``idx[a, b] = b - a + size - 1``: the row of a relative embedding for offset b - a. Shape (size, size)."""
    pos = torch.arange(size, device=device)
    return pos[None, :] - pos[:, None] + size - 1


def relative_logits(q: Tensor, rel_h: Tensor, rel_w: Tensor, h: int, w: int) -> Tensor:
    """The relative-position logits m_h + m_w of Eq. 2–3.

    Pixels are flattened row-major: i = i_y · w + i_x. Entry [i, j] of the result is
    q_iᵀ r^H_{j_y − i_y} + q_iᵀ r^W_{j_x − i_x}. The dot products with every embedding
    row are taken once (q · rᵀ) and then picked by relative offset, so no (N, N, c_K)
    tensor is ever built.

    Args:
        q: queries ``(..., N, c_K)`` with N = h · w.
        rel_h: height embeddings r^H ``(2h − 1, c_K)``; row d + h − 1 encodes offset d.
        rel_w: width embeddings r^W ``(2w − 1, c_K)``; row d + w − 1 encodes offset d.
    Returns:
        ``(..., N, N)`` unscaled logits (the caller divides by √c_K).
    """
    n = q.shape[-2]
    if n != h * w:
        raise ValueError(f"q has {n} positions but h*w = {h}*{w} = {h * w}")
    if rel_h.shape[0] != 2 * h - 1 or rel_w.shape[0] != 2 * w - 1:
        raise ValueError(
            f"rel_h must have 2h-1={2 * h - 1} rows and rel_w 2w-1={2 * w - 1}, "
            f"got {rel_h.shape[0]} and {rel_w.shape[0]}")
    lead = q.shape[:-2]
    q = q.reshape(*lead, h, w, q.shape[-1])
    # (..., h, w, 2h-1) -> pick offset j_y - i_y for every (i_y, j_y): (..., h, w, h)
    qh = q @ rel_h.transpose(0, 1)
    iy = torch.arange(h, device=q.device)[:, None, None]
    mh = qh[..., iy, torch.arange(w, device=q.device)[None, :, None], _relative_index(h, q.device)[:, None, :]]
    # (..., h, w, 2w-1) -> pick offset j_x - i_x for every (i_x, j_x): (..., h, w, w)
    qw = q @ rel_w.transpose(0, 1)
    ix = torch.arange(w, device=q.device)[None, :, None]
    mw = qw[..., torch.arange(h, device=q.device)[:, None, None], ix, _relative_index(w, q.device)[None, :, :]]
    # m[i, (j_y, j_x)] = mh[i, j_y] + mw[i, j_x]
    m = mh[..., :, None] + mw[..., None, :]
    return m.reshape(*lead, n, n)


def relative_queries_keys(q: Tensor, k: Tensor, rel_h: Tensor, rel_w: Tensor,
                          h: int, w: int) -> tuple[Tensor, Tensor]:
    """Eq. 2 folded into one dot product: q̃_i · k̃_j = q_iᵀ k_j + m_h[i, j] + m_w[i, j].

    q̃_i = [q_i, (q_iᵀ r^H_{j_y − i_y})_{j_y < h}, (q_iᵀ r^W_{j_x − i_x})_{j_x < w}] and
    k̃_j = [k_j, onehot_h(j_y), onehot_w(j_x)], so q̃ k̃ᵀ is exactly Q Kᵀ + m_h + m_w of Eq. 3
    and fused attention kernels can take it without an (N, N) bias. Building q̃ costs
    N (h + w) c_K multiply-adds, against N² c_K for Q Kᵀ itself.

    Args:
        q, k: queries and keys ``(..., N, c_K)``, N = h · w, pixels row-major.
        rel_h: r^H ``(..., 2h − 1, c_K)``; rel_w: r^W ``(..., 2w − 1, c_K)``; their leading
            dims broadcast against q's (one embedding per head: ``(n, 2h − 1, c_K)`` for q
            ``(B, n, N, c_K)``).
    Returns:
        q̃, k̃ ``(..., N, c_K + h + w)``.
    """
    *lead, n, c = q.shape
    if n != h * w:
        raise ValueError(f"q has {n} positions but h*w = {h}*{w} = {h * w}")
    q_grid = q.reshape(*lead, h, w, c)
    # mh[..., i_y, i_x, j_y] = q_i · r^H_{j_y − i_y};  mw[..., i_y, i_x, j_x] = q_i · r^W_{j_x − i_x}
    mh = torch.einsum("...yxc,...yvc->...yxv", q_grid, rel_h[..., _relative_index(h, q.device), :])
    mw = torch.einsum("...yxc,...xuc->...yxu", q_grid, rel_w[..., _relative_index(w, q.device), :])
    q_aug = torch.cat([q, mh.reshape(*lead, n, h), mw.reshape(*lead, n, w)], dim=-1)
    rows = torch.eye(h, dtype=k.dtype, device=k.device).repeat_interleave(w, dim=0)  # (N, h): onehot(j_y)
    cols = torch.eye(w, dtype=k.dtype, device=k.device).repeat(h, 1)  # (N, w): onehot(j_x)
    k_aug = torch.cat([k, torch.cat([rows, cols], dim=1).expand(*k.shape[:-1], h + w)], dim=-1)
    return q_aug, k_aug


class RelativeSelfAttention(nn.Module):
    """Self-attention over the pixels of a feature map with relative positions (Eq. 1–3).

    SA = softmax((Q Kᵀ + m_h + m_w) / √c_K) · V, with Q, K, V 1×1 convolutions of the input and
    m_h, m_w the relative logits of ``relative_logits``.

    ``impl="plain"`` computes exactly that (the readable reference); ``impl="sdpa"`` folds
    m_h + m_w into the dot product (``relative_queries_keys``) and hands it to
    ``F.scaled_dot_product_attention``, so no (N, N) logit or bias tensor is built. Both
    compute the same function.

    Input ``(B, c_in, h, w)``; output ``(B, c_V, h, w)``.
    """

    def __init__(self, in_channels: int, key_channels: int, value_channels: int,
                 height: int, width: int, impl: AttentionImpl = "sdpa"):
        super().__init__()
        if impl not in ("sdpa", "plain"):
            raise ValueError(f"impl must be 'sdpa' or 'plain', got {impl!r}")
        self.key_channels, self.height, self.width, self.impl = key_channels, height, width, impl
        self.query = nn.Conv2d(in_channels, key_channels, 1)
        self.key = nn.Conv2d(in_channels, key_channels, 1)
        self.value = nn.Conv2d(in_channels, value_channels, 1)
        # r^H, r^W of Eq. 2, initialised at the scale of a unit-variance query's dot product
        self.rel_h = nn.Parameter(torch.randn(2 * height - 1, key_channels) * key_channels ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * width - 1, key_channels) * key_channels ** -0.5)

    def init_query_key(self, gain: float) -> None:
        """Draw Q's and K's weights from N(0, gain² / c_in) and zero their biases (``recipe.qk_init
        = "unit_logits"``, book/open_choices.md, choice 18).

        With PyTorch's default init the logits (Q Kᵀ + m_h + m_w) / √c_K of the cpu preset start
        with a spread of about 0.2, so every head's softmax is within 1 % of uniform and its map
        flat; with gain √2 on ReLU features they start near 1.
        """
        for conv in (self.query, self.key):
            nn.init.normal_(conv.weight, std=gain / math.sqrt(conv.in_channels))
            nn.init.zeros_(conv.bias)

    def _qkv(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, w = z.shape[-2:]
        if (h, w) != (self.height, self.width):
            raise ValueError(f"expected a {self.height}x{self.width} feature map, got {h}x{w}")
        return tuple(conv(z).flatten(2).transpose(1, 2) for conv in (self.query, self.key, self.value))

    def weights(self, z: Tensor) -> Tensor:
        """The attention softmax((Q Kᵀ + m_h + m_w) / √c_K) of Eq. 1–3 ``(B, N, N)``, row i the
        weights pixel i gives every pixel j (N = h · w, row-major)."""
        q, k, _ = self._qkv(z)  # (B, N, c_K) each
        return self._softmax(q, k)

    def _softmax(self, q: Tensor, k: Tensor) -> Tensor:
        rel = relative_logits(q, self.rel_h, self.rel_w, self.height, self.width)  # (B, N, N)
        return torch.softmax((q @ k.transpose(1, 2) + rel) / math.sqrt(self.key_channels), dim=-1)

    def forward(self, z: Tensor) -> Tensor:
        b, _, h, w = z.shape
        q, k, v = self._qkv(z)  # (B, N, c_K), (B, N, c_K), (B, N, c_V)
        if self.impl == "plain":
            out = self._softmax(q, k) @ v
        else:
            q_aug, k_aug = relative_queries_keys(q, k, self.rel_h, self.rel_w, h, w)
            out = F.scaled_dot_product_attention(q_aug, k_aug, v, scale=self.key_channels ** -0.5)
        return out.transpose(1, 2).reshape(b, -1, h, w)


class ChannelAttention(nn.Module):
    """Channel-wise attention weights w_CA of Eq. 4.

    CA = 1×1 conv of the input to c_V channels; each channel is max-pooled over space (the
    paper's choice, rather than SE-Net's average); w_CA = σ(FC2 δ(FC1 δ(pooled))).

    Input ``(B, c_in, h, w)``; output ``(B, c_V)`` in (0, 1).
    """

    def __init__(self, in_channels: int, value_channels: int, reduction: int):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(1, value_channels // reduction)
        self.project = nn.Conv2d(in_channels, value_channels, 1)
        self.fc1 = nn.Linear(value_channels, hidden)
        self.fc2 = nn.Linear(hidden, value_channels)

    def forward(self, z: Tensor) -> Tensor:
        pooled = self.project(z).amax(dim=(2, 3))  # (B, c_V)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.relu(pooled)))))


class HybridAttention(nn.Module):
    """One hybrid-attention head (Eq. 5): HA = Σ_c SA_c · w_CA,c, a single-channel map.

    ``mode="self_sum"`` is the ADPF w/SA ablation: HA = Σ_c SA_c, and there is no
    channel-attention module at all.

    Input ``(B, c_in, h, w)``; output ``(B, h, w)``.
    """

    def __init__(self, in_channels: int, key_channels: int, value_channels: int,
                 height: int, width: int, reduction: int,
                 mode: Literal["hybrid", "self_sum"] = "hybrid", impl: AttentionImpl = "sdpa"):
        super().__init__()
        if mode not in ("hybrid", "self_sum"):
            raise ValueError(f"mode must be 'hybrid' or 'self_sum', got {mode!r}")
        self.self_attention = RelativeSelfAttention(in_channels, key_channels, value_channels,
                                                    height, width, impl)
        self.channel_attention = (ChannelAttention(in_channels, value_channels, reduction)
                                  if mode == "hybrid" else None)

    def forward(self, z: Tensor) -> Tensor:
        sa = self.self_attention(z)  # (B, c_V, h, w)
        if self.channel_attention is None:
            return sa.sum(dim=1)
        return torch.einsum("bchw,bc->bhw", sa, self.channel_attention(z))


def hybrid_attention_heads(heads: Sequence[HybridAttention], x: Tensor) -> Tensor:
    """The maps HA_k of n hybrid-attention heads (Eq. 5), head k on the k-th channel slice of x.

    With ``impl="plain"`` each head runs on its slice in turn (the reference). With
    ``impl="sdpa"`` all heads run at once, computing the same function:

    - the 1×1 convolutions Q, K, V and CA of every head are one batched matrix product;
    - Eq. 5 is linear in V, so HA = Σ_c (A V)_c w_CA,c = A (V w_CA): the attention A is
      applied to a single value channel per head instead of c_V;
    - the relative logits are folded into the dot product (``relative_queries_keys``) and
      one ``F.scaled_dot_product_attention`` call takes all heads and images; the value
      channel is zero-padded to the query width, which the fused kernels need.

    Input ``(B, n · c_in, h, w)``; output ``(B, n, h, w)``.
    """
    attentions = [head.self_attention for head in heads]
    if attentions[0].impl == "plain":
        return torch.stack([head(z) for head, z in zip(heads, x.chunk(len(heads), dim=1))], dim=1)
    first = attentions[0]
    b, _, h, w = x.shape
    if (h, w) != (first.height, first.width):
        raise ValueError(f"expected a {first.height}x{first.width} feature map, got {h}x{w}")
    c_k, c_v = first.key_channels, first.value.out_channels
    hybrid = heads[0].channel_attention is not None
    convs = [[a.query, a.key, a.value] + ([head.channel_attention.project] if hybrid else [])
             for head, a in zip(heads, attentions)]
    weight = torch.stack([torch.cat([conv.weight[:, :, 0, 0] for conv in group]) for group in convs])
    bias = torch.stack([torch.cat([conv.bias for conv in group]) for group in convs])
    proj = weight @ x.reshape(b, len(heads), -1, h * w)  # (B, n, 2 c_K + c_V (+ c_V), N)
    proj = proj + bias[..., None].to(proj.dtype)  # the product's dtype (bf16 under autocast)
    q, k, v, *ca = proj.split([c_k, c_k, c_v] + ([c_v] if hybrid else []), dim=2)
    if hybrid:
        w_ca = _channel_attention_heads([head.channel_attention for head in heads], ca[0].amax(dim=-1))
        values = torch.einsum("bncj,bnc->bnj", v, w_ca)  # (B, n, N)
    else:
        values = v.sum(dim=2)
    q_aug, k_aug = relative_queries_keys(
        q.transpose(-1, -2), k.transpose(-1, -2),
        torch.stack([a.rel_h for a in attentions]), torch.stack([a.rel_w for a in attentions]), h, w)
    values = F.pad(values[..., None], (0, q_aug.shape[-1] - 1))  # (B, n, N, c_K + h + w)
    out = F.scaled_dot_product_attention(q_aug, k_aug, values, scale=c_k ** -0.5)
    return out[..., 0].reshape(b, len(heads), h, w)


def _channel_attention_heads(modules: Sequence[ChannelAttention], pooled: Tensor) -> Tensor:
    """Eq. 4 for n heads at once from their max-pooled CA ``(B, n, c_V)``; returns w_CA ``(B, n, c_V)``."""
    w1, b1 = torch.stack([m.fc1.weight for m in modules]), torch.stack([m.fc1.bias for m in modules])
    w2, b2 = torch.stack([m.fc2.weight for m in modules]), torch.stack([m.fc2.bias for m in modules])
    hidden = F.relu(torch.einsum("bnc,nkc->bnk", F.relu(pooled), w1) + b1)
    return torch.sigmoid(torch.einsum("bnk,nck->bnc", hidden, w2) + b2)
