"""Eq. 1–5 and the fused form the model trains with, against the float64 loops of adpf.reference."""
import math

import pytest
import torch

from adpf import reference
from adpf.attention import (ChannelAttention, HybridAttention, RelativeSelfAttention, hybrid_attention_heads,
                            relative_logits, relative_queries_keys)

torch.manual_seed(0)
D = torch.float64


def loop_self_attention(module, z):
    """Eq. 2–3 by the reference loops, image by image: z ``(B, c_in, h, w)`` → ``(B, c_V, h, w)``."""
    h, w = z.shape[-2:]
    out = []
    for image in z:
        q, k, v = (reference.conv1x1(conv, image) for conv in (module.query, module.key, module.value))
        out.append(reference.relative_self_attention(q, k, v, module.rel_h, module.rel_w, h, w).T.reshape(-1, h, w))
    return torch.stack(out)


def test_the_references_on_cases_worked_by_hand():
    # Eq. 1 with zero queries: every logit is 0, so each pixel averages the values
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=D)
    assert reference.self_attention(torch.zeros(2, 3), torch.randn(2, 3), v).tolist() == [[2.0, 4.0]] * 2
    # a 1x2 map: pixel 0 sees pixel 1 at offset +1 (row 2 of r^W), pixel 1 sees pixel 0 at -1 (row 0)
    q = torch.tensor([[1.0], [2.0]], dtype=D)
    rel_h, rel_w = torch.tensor([[10.0]], dtype=D), torch.tensor([[1.0], [0.0], [100.0]], dtype=D)
    assert reference.relative_logits(q, rel_h, rel_w, 1, 2).tolist() == [[10.0, 110.0], [22.0, 20.0]]
    # Eq. 4 with zero layers: σ(0) = 1/2 for every channel
    zero = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    assert reference.channel_weights(torch.randn(5, 2), zero, zero).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("h,w", [(3, 4), (1, 5), (4, 1)])
def test_relative_logits_match_loop(h, w):
    q = torch.randn(2, h * w, 5, dtype=D)
    rel_h, rel_w = torch.randn(2 * h - 1, 5, dtype=D), torch.randn(2 * w - 1, 5, dtype=D)
    got = relative_logits(q, rel_h, rel_w, h, w)
    for b in range(2):
        torch.testing.assert_close(got[b], reference.relative_logits(q[b], rel_h, rel_w, h, w))


def test_relative_logits_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="positions"):
        relative_logits(torch.randn(1, 7, 3), torch.randn(5, 3), torch.randn(7, 3), 3, 4)
    with pytest.raises(ValueError, match="2h-1"):
        relative_logits(torch.randn(1, 12, 3), torch.randn(4, 3), torch.randn(7, 3), 3, 4)


def test_without_position_terms_eq3_is_eq1():
    q, k, v = torch.randn(6, 3, dtype=D), torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    zero_h, zero_w = torch.zeros(3, 3, dtype=D), torch.zeros(5, 3, dtype=D)
    torch.testing.assert_close(reference.relative_self_attention(q, k, v, zero_h, zero_w, 2, 3),
                               reference.self_attention(q, k, v))


@pytest.mark.parametrize("impl", ["plain", "sdpa"])
def test_self_attention_matches_loop(impl):
    module = RelativeSelfAttention(6, 4, 5, 3, 4, impl=impl).to(D)
    z = torch.randn(2, 6, 3, 4, dtype=D)
    with torch.no_grad():
        got = module(z)
        assert got.shape == (2, 5, 3, 4)
        torch.testing.assert_close(got, loop_self_attention(module, z))


@pytest.mark.parametrize("impl", ["plain", "sdpa"])
@pytest.mark.parametrize("query_scale", [1.0, 40.0])
def test_self_attention_gradient_matches_finite_differences_of_the_loop(impl, query_scale):
    """d/d r^H of Σ SA · weight, by autograd and by central differences of the reference; at
    query_scale 40 the softmax saturates (a weight above 0.999 in at least one row of six)."""
    torch.manual_seed(1)
    module = RelativeSelfAttention(3, 3, 2, 2, 3, impl=impl).to(D)
    with torch.no_grad():
        module.query.weight.mul_(query_scale)
    z = torch.randn(1, 3, 2, 3, dtype=D)
    with torch.no_grad():
        q, k = reference.conv1x1(module.query, z[0]), reference.conv1x1(module.key, z[0])
        rows = torch.softmax((q @ k.T + reference.relative_logits(q, module.rel_h, module.rel_w, 2, 3)) / 3 ** 0.5, -1)
    assert (rows.amax(-1) > 0.999).any() == (query_scale > 1)
    weight = torch.randn(1, 2, 2, 3, dtype=D)
    (module(z) * weight).sum().backward()
    step, numeric = 1e-6, torch.zeros_like(module.rel_h)
    with torch.no_grad():
        for idx in torch.cartesian_prod(*map(torch.arange, module.rel_h.shape)).tolist():
            values = []
            for sign in (1, -1):
                module.rel_h[tuple(idx)] += sign * step
                values.append((loop_self_attention(module, z) * weight).sum().item())
                module.rel_h[tuple(idx)] -= sign * step
            numeric[tuple(idx)] = (values[0] - values[1]) / (2 * step)
    assert torch.isfinite(module.rel_h.grad).all()
    torch.testing.assert_close(module.rel_h.grad, numeric, rtol=1e-5, atol=1e-7)


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
        for b in range(3):
            ref = reference.channel_weights(reference.conv1x1(module.project, z[b]), module.fc1, module.fc2)
            torch.testing.assert_close(got[b], ref)
    assert module.fc1.out_features == 2


def test_channel_attention_pools_the_maximum_not_the_mean():
    """One channel high on a single pixel, one moderate everywhere: Eq. 4 must see the peak."""
    module = ChannelAttention(2, 2, reduction=1).to(D)
    with torch.no_grad():
        module.project.weight.copy_(torch.eye(2, dtype=D)[..., None, None])
        module.project.bias.zero_()
    z = torch.zeros(1, 2, 4, 4, dtype=D)
    z[0, 0, 1, 2], z[0, 1] = 8.0, 1.0
    with torch.no_grad():
        got = module(z)[0]
        torch.testing.assert_close(got, reference.channel_weights(reference.conv1x1(module.project, z[0]),
                                                                  module.fc1, module.fc2))
        pooled = module.project(z).amax(dim=(2, 3))
    assert pooled[0].tolist() == [8.0, 1.0]


def test_hybrid_attention_matches_loop():
    module = HybridAttention(6, 4, 5, 3, 4, reduction=2).to(D)
    z = torch.randn(2, 6, 3, 4, dtype=D)
    with torch.no_grad():
        got = module(z)
        assert got.shape == (2, 3, 4)
        for b in range(2):
            torch.testing.assert_close(got[b], reference.hybrid_attention_head(module, z[b]))


def test_self_sum_variant_sums_channels_without_channel_attention():
    module = HybridAttention(6, 4, 5, 3, 4, reduction=2, mode="self_sum").to(D)
    assert module.channel_attention is None
    z = torch.randn(2, 6, 3, 4, dtype=D)
    with torch.no_grad():
        torch.testing.assert_close(module(z)[0], reference.hybrid_attention_head(module, z[0]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="impl"):
        RelativeSelfAttention(4, 4, 4, 2, 2, impl="flash")
    with pytest.raises(ValueError, match="mode"):
        HybridAttention(4, 4, 4, 2, 2, 2, mode="cross")
    with pytest.raises(ValueError, match="3x3"):
        RelativeSelfAttention(4, 4, 4, 3, 3)(torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize("h,w", [(3, 4), (5, 2)])
def test_relative_queries_keys_fold_the_relative_logits(h, w):
    """q̃ and k̃ are the reference's, and q̃ k̃ᵀ = Q Kᵀ + m_h + m_w, with per-head embeddings broadcast over a batch."""
    q, k = torch.randn(2, 3, h * w, 5, dtype=D), torch.randn(2, 3, h * w, 5, dtype=D)
    rel_h, rel_w = torch.randn(3, 2 * h - 1, 5, dtype=D), torch.randn(3, 2 * w - 1, 5, dtype=D)
    q_aug, k_aug = relative_queries_keys(q, k, rel_h, rel_w, h, w)
    assert q_aug.shape == k_aug.shape == (2, 3, h * w, 5 + h + w)
    for b in range(2):
        for head in range(3):
            ref_q, ref_k = reference.relative_queries_keys(q[b, head], k[b, head], rel_h[head], rel_w[head], h, w)
            torch.testing.assert_close(q_aug[b, head], ref_q)
            torch.testing.assert_close(k_aug[b, head], ref_k)
            logits = q[b, head] @ k[b, head].T + reference.relative_logits(q[b, head], rel_h[head], rel_w[head], h, w)
            torch.testing.assert_close(ref_q @ ref_k.T, logits)


@pytest.mark.parametrize("mode", ["hybrid", "self_sum"])
def test_fused_heads_match_the_loops_and_the_plain_heads_forward_and_backward(mode):
    """hybrid_attention_heads: all heads in one SDPA call computes, head by head on its slice,
    the reference's Eq. 1–5, and the gradients of the plain heads."""
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
    with torch.no_grad():
        for b in range(2):
            ref, scaled = reference.rmhha(heads, torch.ones(3), x[b])
            torch.testing.assert_close(results["sdpa"][0][b], ref)
            torch.testing.assert_close(scaled, ref)
    torch.testing.assert_close(results["sdpa"][0], results["plain"][0])
    for fused, plain in zip(results["sdpa"][1], results["plain"][1]):
        torch.testing.assert_close(fused, plain)


def test_the_attention_weights_are_the_softmax_the_loop_averages_the_values_with():
    module = RelativeSelfAttention(6, 4, 5, 3, 4).to(D)
    z = torch.randn(2, 6, 3, 4, dtype=D)
    with torch.no_grad():
        weights = module.weights(z)  # (B, N, N)
        values = module.value(z).flatten(2).transpose(1, 2)  # (B, N, c_V)
        assert weights.shape == (2, 12, 12)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 12, dtype=D))
        torch.testing.assert_close((weights @ values).transpose(1, 2).reshape(2, 5, 3, 4),
                                   loop_self_attention(module, z))


def _entropy_share(weights):
    """Mean entropy of the attention rows over log N: 1 for uniform attention."""
    return float(-(weights * weights.clamp_min(1e-300).log()).sum(-1).mean() / math.log(weights.shape[-1]))


def test_init_query_key_starts_the_logits_near_unit_spread_and_wakes_the_gradient():
    """PyTorch's default init leaves the softmax within 1 % of uniform and the queries' gradient
    small; init_query_key(√2) on ReLU features (as the stem gives) starts the logits near one and
    gives the queries a gradient about twice as large (recipe.qk_init, open choice 18)."""
    torch.manual_seed(1)
    z = torch.relu(torch.randn(8, 16, 16, 16, dtype=D))
    target = torch.randn(8, 16, 16, 16, dtype=D)
    out = {}
    for init in ("pytorch", "unit_logits"):
        torch.manual_seed(2)
        module = RelativeSelfAttention(16, 16, 16, 16, 16, impl="plain").to(D)
        if init == "unit_logits":
            module.init_query_key(gain=math.sqrt(2))
            assert module.query.bias.abs().max() == 0 and module.key.bias.abs().max() == 0
        q, k, _ = (conv(z).flatten(2).transpose(1, 2) for conv in (module.query, module.key, module.value))
        logits = (q @ k.transpose(1, 2)) / math.sqrt(16)
        ((module(z) - target) ** 2).mean().backward()
        out[init] = (float(logits.std(-1).mean()), _entropy_share(module.weights(z).detach()),
                     float(module.query.weight.grad.norm()))
    (spread0, entropy0, grad0), (spread1, entropy1, grad1) = out["pytorch"], out["unit_logits"]
    assert spread0 < 0.4 and entropy0 > 0.99
    assert 0.6 < spread1 < 1.6 and entropy1 < 0.97
    assert grad1 > 1.5 * grad0  # about twice here
