"""Eq. 7 and Eq. 9–14 against the float64 loops of adpf.reference and hand-made distributions."""
import math

import pytest
import torch

from adpf import reference
from adpf.config import get_preset
from adpf.data.prepared import images_to_tensor
from adpf.losses import (NonFiniteOutputError, age_classes, age_distribution, age_estimation_loss, age_std,
                         attention_net_loss, diversity_loss, expected_age,
                         gaussian_label_distribution, kl_loss, log_age_distribution, mae_loss,
                         normalize_maps, predict_age, unit_maps)

D = torch.float64


def test_diversity_loss_matches_double_sum_over_head_pairs():
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 5, 6, dtype=D)
    assert diversity_loss(maps).item() == pytest.approx(reference.diversity_loss(maps), rel=1e-12)


def test_diversity_loss_is_zero_for_disjoint_maps_and_positive_for_overlap():
    maps = torch.zeros(1, 3, 4, 4, dtype=D)
    maps[0, 0, :2, :2] = 1.0
    maps[0, 1, 2:, 2:] = 2.0
    maps[0, 2, 0, 3] = 5.0
    assert diversity_loss(maps).item() == 0.0
    maps[0, 2, 0, 0] = 1.0
    assert diversity_loss(maps).item() == pytest.approx(2 * 1.0 * 1.0)  # both ordered pairs


def test_normalize_maps():
    maps = torch.tensor([[[[1.0, 3.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]], dtype=D)
    got = normalize_maps(maps)
    torch.testing.assert_close(got[0, 0], torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=D))
    torch.testing.assert_close(got[0, 1], torch.full((2, 2), 0.25, dtype=D))  # flat -> uniform
    torch.testing.assert_close(got, reference.normalize_maps(maps), rtol=1e-12, atol=0)
    generic = torch.randn(3, 4, 5, 6, dtype=D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(normalize_maps(generic), reference.normalize_maps(generic), rtol=1e-12, atol=1e-15)
    # invariant to scaling up and shifting; sign flips change it
    torch.testing.assert_close(normalize_maps(5 * maps + 3), got)
    assert diversity_loss(normalize_maps(-maps)) >= 0


def test_diversity_loss_on_unit_maps_matches_a_loop_reference():
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 5, 6, dtype=D) * torch.tensor([1.0, 1e-3, 50.0, 2.0], dtype=D)[None, :, None, None]
    torch.testing.assert_close(unit_maps(maps), reference.unit_maps(maps), rtol=1e-12, atol=1e-15)
    expected = reference.diversity_loss(reference.unit_maps(maps))
    assert diversity_loss(unit_maps(maps)).item() == pytest.approx(expected, rel=1e-12)


def test_unit_maps_loss_gradient_matches_finite_differences_of_the_loops():
    """d L_div / d maps by autograd and by central differences of the reference loops, also on
    maps of very different scales and on a negative map."""
    maps = torch.randn(2, 3, 3, 3, dtype=D, generator=torch.Generator().manual_seed(5))
    maps = maps * torch.tensor([1.0, 1e-3, 50.0], dtype=D)[None, :, None, None]
    maps[1, 2] -= 1e3  # negative everywhere
    x = maps.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(diversity_loss(unit_maps(x)), x)
    scale = maps.std(dim=(-2, -1), keepdim=True)  # each map's spread: steps and gradients scale with it
    steps = (1e-6 * scale).expand_as(maps).reshape(-1)
    numeric = torch.zeros_like(maps)
    for i in range(maps.numel()):
        step = steps[i].item()
        up, down = maps.clone(), maps.clone()
        up.view(-1)[i] += step
        down.view(-1)[i] -= step
        numeric.view(-1)[i] = (reference.diversity_loss(reference.unit_maps(up))
                               - reference.diversity_loss(reference.unit_maps(down))) / (2 * step)
    torch.testing.assert_close(grad * scale, numeric * scale, rtol=1e-6, atol=1e-7)


def test_unit_maps_loss_is_the_head_overlap_and_is_bounded():
    from adpf.evaluate import head_overlap

    torch.manual_seed(1)
    maps = torch.randn(6, 5, 8, 8, dtype=D)
    n = maps.shape[1]
    assert diversity_loss(unit_maps(maps)).item() == pytest.approx(n * (n - 1) * head_overlap(maps), rel=1e-6)
    same = maps[:, :1].expand(-1, n, -1, -1)
    assert diversity_loss(unit_maps(same)).item() == pytest.approx(n * (n - 1), rel=1e-12)  # the bound
    # the same value at every resolution: a map upsampled 4x by repetition overlaps as before
    up = maps.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)
    assert diversity_loss(unit_maps(up)).item() == pytest.approx(diversity_loss(unit_maps(maps)).item(), rel=1e-12)


def test_unit_maps_are_invariant_to_shift_and_positive_scale_but_not_to_a_sign_flip():
    torch.manual_seed(2)
    maps = torch.randn(2, 3, 4, 4, dtype=D)
    scale = torch.tensor([0.01, 7.0, 300.0], dtype=D)[None, :, None, None]
    torch.testing.assert_close(unit_maps(scale * maps - 5.0), unit_maps(maps))
    torch.testing.assert_close(torch.linalg.vector_norm(unit_maps(maps), dim=(-2, -1)), torch.ones(2, 3, dtype=D))
    flipped = maps.clone()
    flipped[:, 0] *= -1
    assert not torch.allclose(unit_maps(flipped)[:, 0], unit_maps(maps)[:, 0])
    assert diversity_loss(unit_maps(flipped)) >= 0  # a flip moves attention, it cannot make L_div negative


def test_unit_maps_loss_gradients_on_flat_negative_and_one_hot_maps():
    maps = torch.zeros(2, 3, 4, 4, dtype=D)
    maps[0, 0] = 3.0  # flat: no contrast, becomes the uniform unit map
    maps[0, 1] = -torch.arange(16, dtype=D).reshape(4, 4) - 100.0  # negative everywhere
    maps[0, 2, 1, 2] = 1.0  # one-hot
    maps[1, 0, 0, 0] = 1.0  # one-hot heads, two of them on the same pixel
    maps[1, 1, 0, 0] = 5.0
    maps[1, 2] = -torch.arange(16, dtype=D).reshape(4, 4).square() - 1.0  # negative, largest at (0, 0)
    maps.requires_grad_(True)
    loss = diversity_loss(unit_maps(maps))
    (grad,) = torch.autograd.grad(loss, maps)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    per_map = grad.abs().sum(dim=(-2, -1))
    assert (per_map[0, 1:] > 0).all() and (per_map[1] > 0).all()
    assert per_map[0, 0] == 0  # a flat map's direction is undefined: it passes no gradient (documented)
    # against finite differences where the loss is smooth (no ties at a map's minimum)
    generic = torch.randn(2, 3, 4, 4, dtype=D, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: diversity_loss(unit_maps(m)), (generic,))


def test_unit_maps_loss_is_zero_for_disjoint_maps_and_grows_with_overlap():
    maps = torch.zeros(1, 3, 4, 4, dtype=D)
    maps[0, 0, :2, :2] = 1.0
    maps[0, 1, 2:, 2:] = 2.0
    maps[0, 2, 0, 3] = 5.0
    assert diversity_loss(unit_maps(maps)).item() == 0.0
    maps[0, 2, 0, 0] = 1.0  # head 3 now shares one of head 1's four pixels
    # u_1 = 1/2 on 4 pixels, u_3 = (5, 1)/sqrt(26): cosine 1/(2 sqrt(26)), both ordered pairs
    assert diversity_loss(unit_maps(maps)).item() == pytest.approx(2 / (2 * math.sqrt(26)), rel=1e-12)


def test_the_default_diversity_loss_pulls_on_the_heads_at_lambda_0_01():
    """At initialisation λ·L_div moves the attention heads a little, not nothing and not most:
    its gradient on RMHHA is between 0.1 % and 100 % of L_AE's (maps summing to one gave 1e-5)."""
    from adpf.data.synthetic import make_synthetic_faces
    from adpf.networks import AttentionNet

    config = get_preset("cpu", variant="attention_only")
    assert config.diversity_weight == 0.01 and config.diversity_maps == "unit"
    faces = make_synthetic_faces(8, config.image_size, seed=0)
    images = images_to_tensor(faces.images)
    torch.manual_seed(0)
    net = AttentionNet(config).train()
    out = net(images)
    params = list(net.rmhha.parameters())
    losses = attention_net_loss(out.logits, torch.from_numpy(faces.ages).float(), out.attention.maps, config)

    def norm(loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.square().sum()) for g in grads if g is not None))

    ratio = norm(config.diversity_weight * losses.diversity) / norm(losses.total - config.diversity_weight * losses.diversity)
    assert 1e-3 < ratio < 1.0


def test_age_distribution_as_written_is_softmax():
    logits = torch.randn(4, 7, dtype=D)
    torch.testing.assert_close(age_distribution(logits, "as_written"), torch.softmax(logits, -1))


def test_age_distribution_raw_clips_negatives_and_renormalises():
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.0], [-1.0, -1.0, 0.0, -3.0]], dtype=D)
    got = age_distribution(logits, "raw")
    torch.testing.assert_close(got[0], torch.tensor([0.25, 0.0, 0.75, 0.0], dtype=D))
    torch.testing.assert_close(got[1], torch.full((4,), 0.25, dtype=D))  # no positive: uniform
    with pytest.raises(ValueError, match="mode"):
        age_distribution(logits, "clipped")


def test_expected_age_std_and_mae_on_hand_made_distributions():
    ages = torch.tensor([10.0, 20.0, 30.0], dtype=D)
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.25, 0.5, 0.25]], dtype=D)
    torch.testing.assert_close(expected_age(probs, ages), torch.tensor([20.0, 20.0, 20.0], dtype=D))
    torch.testing.assert_close(age_std(probs, ages), torch.tensor([0.0, 10.0, math.sqrt(50.0)], dtype=D))
    target = torch.tensor([22.0, 15.0, 20.0], dtype=D)
    assert mae_loss(expected_age(probs, ages), target).item() == pytest.approx((2 + 5 + 0) / 3)
    # and on random distributions, against the loops of Eq. 9-11
    logits = torch.randn(5, 7, dtype=D, generator=torch.Generator().manual_seed(6))
    g = torch.linspace(0, 90, 7, dtype=D)
    probs = age_distribution(logits)
    torch.testing.assert_close(probs, reference.age_distribution(logits), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(expected_age(probs, g), reference.expected_age(probs, g), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(age_std(probs, g), reference.age_std(probs, g), rtol=1e-10, atol=1e-12)
    target = torch.linspace(3, 80, 5, dtype=D)
    assert mae_loss(expected_age(probs, g), target).item() == pytest.approx(
        reference.mae_loss(reference.expected_age(probs, g), target), rel=1e-12)


def test_gaussian_label_distribution():
    ages = torch.arange(0, 11, dtype=D)
    age = torch.tensor([5.0, 0.0, 10.0, 40.0, -30.0], dtype=D)
    p = gaussian_label_distribution(age, ages, sigma=2.0)
    assert p.shape == (5, 11)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=D))
    torch.testing.assert_close(p, reference.gaussian_label_distribution(age, ages, 2.0), rtol=1e-12, atol=1e-300)
    assert p[1].argmax() == 0 and p[2].argmax() == 10  # at the edges: renormalised over the classes
    assert p[3, 10] > 0.999 and p[4, 0] > 0.999  # far outside: edge class
    assert torch.isfinite(p).all()
    # far from the edges the mean is the true age, even between classes
    wide = torch.arange(0, 31, dtype=D)
    mean = expected_age(gaussian_label_distribution(torch.tensor([13.5], dtype=D), wide, 2.0), wide)
    torch.testing.assert_close(mean, torch.tensor([13.5], dtype=D))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_label_distribution(age, ages, sigma=0.0)


def test_kl_loss():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(5, 8, dtype=D), -1)
    r = torch.softmax(torch.randn(5, 8, dtype=D), -1)
    assert kl_loss(p, p.log()).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_loss(p, r.log()).item() == pytest.approx(reference.kl_loss(p, r.log()), rel=1e-10)
    assert kl_loss(p, r.log()).item() > 0
    # P = 0 terms vanish, also where log P' = -inf (and pass no NaN gradient)
    target = torch.tensor([[0.0, 1.0, 0.0]], dtype=D)
    log_probs = torch.tensor([[0.5, 0.5, 0.0]], dtype=D).log().requires_grad_(True)
    loss = kl_loss(target, log_probs)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert log_probs.grad.tolist() == [[0.0, -1.0, 0.0]]


def test_kl_of_the_age_loss_matches_a_loop_reference_also_when_saturated():
    torch.manual_seed(0)
    config = get_preset("cpu")
    ages = age_classes(config).double()
    logits = 3 * torch.randn(4, config.num_classes, dtype=D)
    logits[1, 80] += 40.0  # saturated: every other class below 1e-17
    logits[2] *= 20.0
    true_ages = torch.tensor([20.0, 20.0, 0.0, 100.0], dtype=D)
    got = age_estimation_loss(logits, true_ages, config)
    ref = reference.age_estimation_loss(logits, true_ages, ages, config.sigma, "as_written")
    assert got.kl.item() == pytest.approx(ref["kl"], rel=1e-12)
    assert got.mae.item() == pytest.approx(ref["mae"], rel=1e-12)
    got = got.kl.item()
    assert got > -math.log(1e-8)  # a clamp of P' at 1e-8 caps the KL of every face below this


def saturated_at_80(config):
    """Logits with a margin of 20 on class 80 ``(1, q)``: P' of every other class is about 2e-9."""
    logits = torch.zeros(1, config.num_classes, dtype=D)
    logits[0, 80 - config.age_min] = 20.0
    return logits.requires_grad_(True)


def test_kl_gradient_on_saturated_logits_is_softmax_minus_target():
    config = get_preset("cpu")
    logits, age = saturated_at_80(config), torch.tensor([20.0], dtype=D)
    age_estimation_loss(logits, age, config).kl.backward()
    target = gaussian_label_distribution(age, age_classes(config).double(), config.sigma)
    expected = torch.softmax(logits.detach(), -1) - target
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=1e-15)
    assert logits.grad[0, 20].item() < -0.19  # the pull toward the true age is there (it was 0.0)


def test_a_confident_wrong_prediction_moves_to_the_true_age_under_sgd():
    config = get_preset("cpu")
    ages = age_classes(config).double()
    logits, age = saturated_at_80(config), torch.tensor([20.0], dtype=D)
    optimizer = torch.optim.SGD([logits], lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        age_estimation_loss(logits, age, config).total.backward()
        optimizer.step()
    assert expected_age(age_distribution(logits.detach()), ages).item() == pytest.approx(20.0, abs=0.05)


def test_log_age_distribution():
    logits = 30 * torch.randn(3, 7, dtype=D)
    torch.testing.assert_close(log_age_distribution(logits, "as_written"), torch.log_softmax(logits, -1))
    assert torch.isfinite(log_age_distribution(logits, "as_written")).all()
    # raw Eq. 9: exact zeros are floored (a clamp cannot be avoided there), the rest is log o'
    raw = torch.tensor([[1.0, -2.0, 3.0, 0.0]], dtype=D, requires_grad=True)
    got = log_age_distribution(raw, "raw")
    torch.testing.assert_close(got, torch.tensor([[0.25, 1e-8, 0.75, 1e-8]], dtype=D).log())
    got[0, 1].backward()
    assert raw.grad.abs().sum().item() == 0.0  # a floored class passes no gradient
    with pytest.raises(ValueError, match="mode"):
        log_age_distribution(raw, "clipped")


def test_age_estimation_and_attention_net_losses():
    torch.manual_seed(0)
    config = get_preset("cpu", age_min=0, age_max=9, sigma=1.5, diversity_weight=0.3)
    logits = torch.randn(4, 10, dtype=D)
    age = torch.tensor([1.0, 4.0, 8.0, 9.0], dtype=D)
    ages = torch.arange(10, dtype=D)
    ref = reference.age_estimation_loss(logits, age, ages, 1.5)
    got = age_estimation_loss(logits, age, config)
    for key in ("mae", "kl", "total"):
        assert getattr(got, key).item() == pytest.approx(ref[key], rel=1e-12)
    assert got.diversity is None
    raw_logits = logits + 0.5  # Eq. 9 on the raw outputs: some classes clipped to 0, floored in the log
    ref_raw = reference.age_estimation_loss(raw_logits, age, ages, 1.5, mode="raw")
    got_raw = age_estimation_loss(raw_logits, age, config.replace(eq9="raw"))
    for key in ("mae", "kl", "total"):
        assert getattr(got_raw, key).item() == pytest.approx(ref_raw[key], rel=1e-12)
    maps = torch.randn(4, 3, 2, 2, dtype=D)
    full = attention_net_loss(logits, age, maps, config)
    assert full.total.item() == pytest.approx(
        ref["total"] + 0.3 * reference.diversity_loss(reference.unit_maps(maps)), rel=1e-12)
    normalized = attention_net_loss(logits, age, maps, config.replace(diversity_maps="normalized"))
    assert normalized.diversity.item() == pytest.approx(reference.diversity_loss(reference.normalize_maps(maps)),
                                                        rel=1e-12)
    raw = attention_net_loss(logits, age, maps, config.replace(diversity_maps="raw"))
    assert raw.diversity.item() == pytest.approx(reference.diversity_loss(maps), rel=1e-12)


def test_predict_age_and_classes():
    config = get_preset("cpu", age_min=16, age_max=20)
    assert age_classes(config).tolist() == [16.0, 17.0, 18.0, 19.0, 20.0]
    logits = torch.tensor([[0.0, 0.0, 50.0, 0.0, 0.0]])
    age, std = predict_age(logits, config)
    assert age.item() == pytest.approx(18.0) and std.item() == pytest.approx(0.0, abs=1e-6)


def test_non_finite_outputs_are_an_error_not_a_uniform_guess():
    config = get_preset("cpu", age_min=0, age_max=4)
    logits = torch.zeros(3, 5)
    logits[1, 2] = float("nan")
    logits[2, 0] = float("inf")
    for mode in ("as_written", "raw"):  # the distribution carries the NaN on (it was uniform)
        probs = age_distribution(logits, mode)
        assert torch.isnan(probs[1]).all() and torch.isfinite(probs[0]).all()
    with pytest.raises(NonFiniteOutputError, match=r"not finite for 2 of 3 faces \(1 with NaN, 1 with ±inf only\)") as e:
        predict_age(logits, config)
    assert e.value.rows == [1, 2]
    # a finite output still reads as before, and a raw output with no positive class is still uniform
    assert predict_age(logits[:1], config)[0].item() == pytest.approx(2.0)
    torch.testing.assert_close(age_distribution(-torch.ones(1, 5), "raw"), torch.full((1, 5), 0.2))


def test_the_weight_of_l_mae_scales_only_l_mae():
    torch.manual_seed(0)
    config = get_preset("cpu")
    logits = torch.randn(6, config.num_classes, dtype=torch.float64, requires_grad=True)
    age = torch.tensor([3.0, 17.0, 25.0, 40.0, 66.0, 90.0], dtype=torch.float64)
    one = age_estimation_loss(logits, age, config)
    tenth = age_estimation_loss(logits, age, config.replace(mae_weight=0.1))
    assert torch.equal(one.mae, tenth.mae) and torch.equal(one.kl, tenth.kl)
    assert tenth.total.item() == pytest.approx(0.1 * one.mae.item() + one.kl.item(), rel=1e-12)
    g_one, = torch.autograd.grad(one.total, logits, retain_graph=True)
    g_tenth, = torch.autograd.grad(tenth.total, logits)
    g_mae, = torch.autograd.grad(one.mae, logits)
    assert torch.allclose(g_one - g_tenth, 0.9 * g_mae)
