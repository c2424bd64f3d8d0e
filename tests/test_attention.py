"""Eq. 1–5 against plain float64 loops over pixels and channels."""
import math

import pytest
import torch

from adpf.attention import (ChannelAttention, HybridAttention, RelativeSelfAttention, hybrid_attention_heads,
                            relative_logits, relative_queries_keys)

torch.manual_seed(0)
D = torch.float64


def loop_relative_logits(q, rel_h, rel_w, h, w):
    b, n, _ = q.shape
    out = torch.zeros(b, n, n, dtype=D)
    for bi in range(b):
        for i in range(n):
            iy, ix = divmod(i, w)
            for j in range(n):
                jy, jx = divmod(j, w)
                out[bi, i, j] = q[bi, i] @ rel_h[jy - iy + h - 1] + q[bi, i] @ rel_w[jx - ix + w - 1]
    return out


def loop_self_attention(module, z):
    """Eq. 2–3 pixel pair by pixel pair: l_ij = q_i·(k_j + r^W + r^H)/√c_K, softmax over j, Σ_j a_ij v_j."""
    b, _, h, w = z.shape
    q, k, v = module.query(z), module.key(z), module.value(z)
    c_k = q.shape[1]
    out = torch.zeros(b, v.shape[1], h, w, dtype=D)
    for bi in range(b):
        for iy in range(h):
            for ix in range(w):
                qi = q[bi, :, iy, ix]
                logits = torch.zeros(h, w, dtype=D)
                for jy in range(h):
                    for jx in range(w):
                        key = k[bi, :, jy, jx] + module.rel_w[jx - ix + w - 1] + module.rel_h[jy - iy + h - 1]
                        logits[jy, jx] = qi @ key / math.sqrt(c_k)
                a = torch.exp(logits - logits.max())
                a = a / a.sum()
                out[bi, :, iy, ix] = (v[bi] * a[None]).sum(dim=(1, 2))
    return out


@pytest.mark.parametrize("h,w", [(3, 4), (1, 5), (4, 1)])
def test_relative_logits_match_loop(h, w):
    q = torch.randn(2, h * w, 5, dtype=D)
    rel_h, rel_w = torch.randn(2 * h - 1, 5, dtype=D), torch.randn(2 * w - 1, 5, dtype=D)
    got = relative_logits(q, rel_h, rel_w, h, w)
    torch.testing.assert_close(got, loop_relative_logits(q, rel_h, rel_w, h, w))


def test_relative_logits_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="positions"):
        relative_logits(torch.randn(1, 7, 3), torch.randn(5, 3), torch.randn(7, 3), 3, 4)
    with pytest.raises(ValueError, match="2h-1"):
        relative_logits(torch.randn(1, 12, 3), torch.randn(4, 3), torch.randn(7, 3), 3, 4)


@pytest.mark.parametrize("impl", ["plain", "sdpa"])
def test_self_attention_matches_loop(impl):
    module = RelativeSelfAttention(6, 4, 5, 3, 4, impl=impl).to(D)
    z = torch.randn(2, 6, 3, 4, dtype=D)
    with torch.no_grad():
        got = module(z)
        assert got.shape == (2, 5, 3, 4)
        torch.testing.assert_close(got, loop_self_attention(module, z))


def test_sdpa_and_plain_agree_forward_and_backward():
    module = RelativeSelfAttention(6, 4, 5, 4, 3, impl="plain").to(D)
    z = torch.randn(3, 6, 4, 3, dtype=D, requires_grad=True)
    weight = torch.randn(3, 5, 4, 3, dtype=D)
    grads = {}
    for impl in ("plain", "sdpa"):
        module.impl = impl
        out = module(z)
        params = [z, module.rel_h, module.rel_w, module.query.weight, module.key.weight, module.value.weight]
        grads[impl] = (out, torch.autograd.grad((out * weight).sum(), params))
    torch.testing.assert_close(grads["plain"][0], grads["sdpa"][0])
    for a, b in zip(grads["plain"][1], grads["sdpa"][1]):
        torch.testing.assert_close(a, b)


def test_relative_embeddings_change_the_output():
    module = RelativeSelfAttention(6, 4, 5, 3, 3).to(D)
    z = torch.randn(1, 6, 3, 3, dtype=D)
    before = module(z)
    with torch.no_grad():
        module.rel_h.add_(torch.randn_like(module.rel_h))
    assert not torch.allclose(before, module(z))


def test_channel_attention_matches_loop():
    module = ChannelAttention(6, 8, reduction=4).to(D)
    z = torch.randn(3, 6, 4, 5, dtype=D)
    with torch.no_grad():
        got = module(z)
        ca = module.project(z)
        for b in range(3):
            pooled = torch.stack([ca[b, c].max() for c in range(8)])  # max, not mean
            hidden = torch.relu(module.fc1.weight @ torch.relu(pooled) + module.fc1.bias)
            ref = torch.sigmoid(module.fc2.weight @ hidden + module.fc2.bias)
            torch.testing.assert_close(got[b], ref)
    assert module.fc1.out_features == 2


def test_hybrid_attention_is_channel_weighted_sum_of_self_attention():
    module = HybridAttention(6, 4, 5, 3, 4, reduction=2).to(D)
    z = torch.randn(2, 6, 3, 4, dtype=D)
    got = module(z)
    assert got.shape == (2, 3, 4)
    sa, w_ca = module.self_attention(z), module.channel_attention(z)
    ref = torch.zeros(2, 3, 4, dtype=D)
    for b in range(2):
        for c in range(5):
            ref[b] += sa[b, c] * w_ca[b, c]
    torch.testing.assert_close(got, ref)


def test_self_sum_variant_sums_channels_without_channel_attention():
    module = HybridAttention(6, 4, 5, 3, 4, reduction=2, mode="self_sum").to(D)
    assert module.channel_attention is None
    z = torch.randn(2, 6, 3, 4, dtype=D)
    sa = module.self_attention(z)
    torch.testing.assert_close(module(z), sum(sa[:, c] for c in range(5)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="impl"):
        RelativeSelfAttention(4, 4, 4, 2, 2, impl="flash")
    with pytest.raises(ValueError, match="mode"):
        HybridAttention(4, 4, 4, 2, 2, 2, mode="cross")
    with pytest.raises(ValueError, match="3x3"):
        RelativeSelfAttention(4, 4, 4, 3, 3)(torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize("h,w", [(3, 4), (5, 2)])
def test_relative_queries_keys_fold_the_relative_logits(h, w):
    """q̃ k̃ᵀ = Q Kᵀ + m_h + m_w, for one head and for per-head embeddings broadcast over a batch."""
    q, k = torch.randn(2, 3, h * w, 5, dtype=D), torch.randn(2, 3, h * w, 5, dtype=D)
    rel_h, rel_w = torch.randn(3, 2 * h - 1, 5, dtype=D), torch.randn(3, 2 * w - 1, 5, dtype=D)
    q_aug, k_aug = relative_queries_keys(q, k, rel_h, rel_w, h, w)
    assert q_aug.shape == k_aug.shape == (2, 3, h * w, 5 + h + w)
    for head in range(3):
        ref = q[:, head] @ k[:, head].transpose(1, 2) + loop_relative_logits(q[:, head], rel_h[head], rel_w[head], h, w)
        torch.testing.assert_close(q_aug[:, head] @ k_aug[:, head].transpose(1, 2), ref)


@pytest.mark.parametrize("mode", ["hybrid", "self_sum"])
def test_fused_heads_match_the_plain_heads_forward_and_backward(mode):
    """hybrid_attention_heads: all heads in one SDPA call computes what each plain head computes on its slice."""
    heads = torch.nn.ModuleList(HybridAttention(6, 4, 5, 3, 4, reduction=2, mode=mode, impl="plain")
                                for _ in range(3)).to(D)
    x = torch.randn(2, 18, 3, 4, dtype=D, requires_grad=True)
    weight = torch.randn(2, 3, 3, 4, dtype=D)
    results = {}
    for impl in ("plain", "sdpa"):
        for head in heads:
            head.self_attention.impl = impl
        maps = hybrid_attention_heads(heads, x)
        results[impl] = (maps, torch.autograd.grad((maps * weight).sum(), [x, *heads.parameters()]))
    for k in range(3):  # the plain path is each head on its own slice
        torch.testing.assert_close(results["plain"][0][:, k], heads[k](x[:, 6 * k:6 * (k + 1)]))
    torch.testing.assert_close(results["sdpa"][0], results["plain"][0])
    for fused, plain in zip(results["sdpa"][1], results["plain"][1]):
        torch.testing.assert_close(fused, plain)
