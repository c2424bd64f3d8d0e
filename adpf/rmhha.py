"""Ranking-guided multi-head hybrid attention, RMHHA (Eq. 6).

Open choices made here (numbered as in ``book/open_choices.md``, "choice N"):

3. Head k sees only its own slice of c_head = c_p / n channels of X (the paper's
   multi-head text), and computes Q, K, V and CA from that slice.
6. Heads are ranked by a_k (``rank_by="value"``, the paper's "largest first") or by |a_k|
   (``rank_by="abs"``, for a scale that learned to flip a map's sign).

The scales a_k start at one, so at initialisation RMHHA passes the maps through unchanged;
ties are broken by a stable sort, so equal scales keep head-index order and the ranking is
deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adpf.attention import HybridAttention, hybrid_attention_heads
from adpf.config import ADPFConfig


@dataclass
class AttentionOutput:
    """What RMHHA returns.

    maps: ``(B, n, h, w)`` the hybrid maps HA_k, in head order; the diversity loss reads
        these, so it never reaches the scales a_k.
    weighted: ``(B, n, h, w)`` HA_k · a_k (Eq. 6), in head order; they feed AttentionNet's FC,
        so a_k is trained by the age loss only.
    order: ``(n,)`` int64 head indices, most important first (``maps[:, order]`` is M_1..M_n).
    scales: ``(n,)`` the scales a_k, in head order.
    """

    maps: Tensor
    weighted: Tensor
    order: Tensor
    scales: Tensor

    @property
    def ranked(self) -> Tensor:
        """M_1..M_n ``(B, n, h, w)``: HA_k · sign(a_k) in ranked order, the maps boxes are cut from.

        Boxes read a map min-max normalised, so they are those of the map the FC sees, HA_k · a_k:
        a positive a_k leaves HA_k as it is (bit for bit: the same boxes as HA_k's), a negative
        one flips it, so the box lands where the FC sees the largest value rather than on the
        region it weighs most negatively; a_k = 0 (a head the FC ignores) gives a flat map and
        the centred box.
        """
        return self.maps[:, self.order] * torch.sign(self.scales.detach()[self.order])[None, :, None, None]


class RMHHA(nn.Module):
    """n hybrid-attention heads on channel slices of X, each weighted by a learnable scale a_k (Eq. 6).

    Input X ``(B, c_p, h, w)`` with c_p = n · c_head and h = w = ``config.x_size``;
    output ``AttentionOutput``.
    """

    def __init__(self, config: ADPFConfig):
        super().__init__()
        self.config = config
        self.heads = nn.ModuleList(
            HybridAttention(config.c_head, config.key_channels, config.value_channels,
                            config.x_size, config.x_size, config.ca_reduction,
                            mode=config.attention, impl=config.attention_impl)
            for _ in range(config.heads))
        self.scales = nn.Parameter(torch.ones(config.heads))

    def ranking(self) -> Tensor:
        """Head indices ``(n,)``, most important first (by a_k, |a_k|, or head order when ranking is off)."""
        if not self.config.ranking:
            return torch.arange(len(self.heads), device=self.scales.device)
        key = self.scales.detach()
        if self.config.rank_by == "abs":
            key = key.abs()
        return torch.argsort(key, descending=True, stable=True)

    def forward(self, x: Tensor) -> AttentionOutput:
        if x.shape[1] != self.config.x_channels:
            raise ValueError(f"RMHHA expects X with {self.config.x_channels} channels, got {x.shape[1]}")
        maps = hybrid_attention_heads(self.heads, x)  # (B, n, h, w)
        weighted = maps * self.scales[None, :, None, None]
        return AttentionOutput(maps=maps, weighted=weighted, order=self.ranking(), scales=self.scales)
