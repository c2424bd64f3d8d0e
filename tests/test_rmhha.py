"""Eq. 6: heads on channel slices, the scales a_k, the ranking, and where gradients flow,
against the float64 loops of adpf.reference."""
import pytest
import torch

from adpf import reference
from adpf.config import get_preset
from adpf.losses import attention_net_loss, diversity_loss, normalize_maps
from adpf.rmhha import RMHHA

D = torch.float64


def tiny(**changes):
    return get_preset("cpu", image_size=16, x_size=4, x_channels=15, heads=3, key_channels=4, value_channels=4,
                      fusion_channels=(8, 8, 8), **changes)


def test_each_head_sees_only_its_slice_and_outputs_match_eq6():
    torch.manual_seed(0)
    config = tiny()
    module = RMHHA(config).to(D)
    with torch.no_grad():
        module.scales.copy_(torch.tensor([0.5, -2.0, 3.0]))
    x = torch.randn(2, 15, 4, 4, dtype=D)
    out = module(x)
    assert out.maps.shape == out.weighted.shape == (2, 3, 4, 4)
    for b in range(2):
        maps, scaled = reference.rmhha(module.heads, module.scales, x[b])
        torch.testing.assert_close(out.maps[b], maps)
        torch.testing.assert_close(out.weighted[b], scaled)
    # changing head 1's slice changes only map 1
    x2 = x.clone()
    x2[:, 5:10] += 1.0
    out2 = module(x2)
    torch.testing.assert_close(out2.maps[:, [0, 2]], out.maps[:, [0, 2]])
    assert not torch.allclose(out2.maps[:, 1], out.maps[:, 1])


@pytest.mark.parametrize("rank_by,scales,expected", [
    ("value", [0.5, -2.0, 3.0], [2, 0, 1]),
    ("abs", [0.5, -2.0, 3.0], [2, 1, 0]),
    ("value", [1.0, 1.0, 1.0], [0, 1, 2]),  # ties keep head order
    ("value", [0.1, 0.7, 0.7], [1, 2, 0]),
])
def test_ranking_follows_scales(rank_by, scales, expected):
    module = RMHHA(tiny(rank_by=rank_by))
    with torch.no_grad():
        module.scales.copy_(torch.tensor(scales))
    out = module(torch.randn(1, 15, 4, 4))
    assert out.order.dtype == torch.int64
    assert out.order.tolist() == expected == reference.ranked_maps(out.maps, scales, rank_by)[0]


def test_ranked_maps_are_the_maps_signed_by_their_scales_in_ranked_order():
    torch.manual_seed(0)
    module = RMHHA(tiny(rank_by="abs")).to(D)
    scales = [0.5, -2.0, 0.0]
    with torch.no_grad():
        module.scales.copy_(torch.tensor(scales))
    out = module(torch.randn(2, 15, 4, 4, dtype=D))
    order, ranked = reference.ranked_maps(out.maps, scales, "abs")
    assert out.order.tolist() == order == [1, 0, 2]
    assert torch.equal(out.ranked, ranked)  # a sign flip and a reordering: exact


def test_ranking_off_gives_head_order():
    module = RMHHA(tiny(ranking=False))
    with torch.no_grad():
        module.scales.copy_(torch.tensor([0.1, 0.2, 0.3]))
    assert module(torch.randn(1, 15, 4, 4)).order.tolist() == [0, 1, 2]


def test_scales_start_at_one_so_weighted_equals_maps():
    module = RMHHA(tiny())
    out = module(torch.randn(2, 15, 4, 4))
    torch.testing.assert_close(out.weighted, out.maps)


@pytest.mark.parametrize("diversity_maps", ["normalized", "raw"])
def test_scales_get_gradient_from_age_loss_only(diversity_maps):
    torch.manual_seed(1)
    config = tiny(diversity_maps=diversity_maps, age_min=0, age_max=9)
    module = RMHHA(config).to(D)
    fc = torch.nn.Linear(3 * 16, config.num_classes).to(D)
    x = torch.randn(2, 15, 4, 4, dtype=D)
    out = module(x)
    maps = normalize_maps(out.maps) if diversity_maps == "normalized" else out.maps
    div = diversity_loss(maps)
    grad_div = torch.autograd.grad(div, [module.scales, module.heads[0].self_attention.rel_h],
                                   retain_graph=True, allow_unused=True)
    assert grad_div[0] is None  # L_div never reaches a_k
    assert grad_div[1].abs().sum() > 0  # ...but it does train the heads
    logits = fc(out.weighted.flatten(1))
    loss = attention_net_loss(logits, torch.tensor([3.0, 7.0], dtype=D), out.maps, config)
    (g,) = torch.autograd.grad(loss.total, [module.scales])
    assert torch.all(g != 0)
    # the age-loss part alone gives exactly the same gradient to a_k
    logits = fc(module(x).weighted.flatten(1))
    ae_only = attention_net_loss(logits, torch.tensor([3.0, 7.0], dtype=D), module(x).maps,
                                 config.replace(diversity_weight=0.0))
    (g0,) = torch.autograd.grad(ae_only.total, [module.scales])
    torch.testing.assert_close(g, g0)


def test_wrong_channel_count_raises():
    with pytest.raises(ValueError, match="15 channels"):
        RMHHA(tiny())(torch.randn(1, 14, 4, 4))
