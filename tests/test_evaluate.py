"""MAE, CS(v), per-decade errors, predictions from the age distribution, and the attention diagnostics,
each against a plain float64 loop (those of adpf.reference where the loop is an equation's)."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from adpf import reference
from adpf.config import get_preset
from adpf.evaluate import (age_group_errors, attention_maps, attention_report, box_coverage, calibration,
                           box_region_share, box_statistics, fit_std_scale, head_entropy,
                           constant_baseline, cs_curve, head_overlap, head_similarity, mae, mask_share, predict,
                           ranked_boxes, summarize)
from adpf.networks import ModelOutput, build_model

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)


def tiny(**changes):
    return get_preset("cpu", **{**TINY, **changes})


def test_mae_and_cs_curve_match_loops():
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 4, size=57).round(1)
    assert mae(errors) == pytest.approx(reference.mae_loss(errors, np.zeros(57)), abs=1e-12)
    cs = cs_curve(errors, v_max=12)
    assert cs.shape == (13,)
    assert np.allclose(cs, reference.cumulative_score(errors, 12).numpy(), rtol=0, atol=1e-15)
    assert cs_curve(np.array([0.0, 1.0, -1.0, 2.5]), 3).tolist() == [0.25, 0.75, 0.75, 1.0]
    with pytest.raises(ValueError, match="empty"):
        mae(np.array([]))


def band_of(age):
    """The band name of one age, written out as a plain chain of comparisons."""
    if age < 0:
        return "other"
    if age < 13:
        return "0-12"
    if age < 20:
        return "13-19"
    if age >= 60:
        return "60+"
    decade = int(age // 10) * 10
    return f"{decade}-{decade + 9}"


def test_age_bands_match_a_loop():
    rng = np.random.default_rng(1)
    ages = np.concatenate([rng.uniform(0, 95, size=300), [0.0, 12.99, 13.0, 19.5, 20.0, 59.99, 60.0, -2.0]])
    errors = rng.normal(0, 5, size=len(ages)).round(1)
    table = age_group_errors(ages, errors)
    groups = {}
    for a, e in zip(ages, errors):
        groups.setdefault(band_of(a), []).append(abs(e))
    order = ["0-12", "13-19", "20-29", "30-39", "40-49", "50-59", "60+", "other"]
    assert table["group"].tolist() == [g for g in order if g in groups]
    assert list(table.columns) == ["group", "count", "mae", "cs1", "cs3", "cs5", "cs10"]
    for _, row in table.iterrows():
        band = groups[row["group"]]
        assert row["count"] == len(band)
        assert row["mae"] == pytest.approx(sum(band) / len(band), abs=1e-12)
        for v in (1, 3, 5, 10):
            assert row[f"cs{v}"] == pytest.approx(sum(e <= v for e in band) / len(band), abs=1e-12)
    assert table["count"].sum() == len(ages)


def test_age_bands_leave_out_empty_bands():
    table = age_group_errors(np.array([61.0, 75.0, 5.0]), np.array([1.0, -3.0, 0.5]))
    assert table["group"].tolist() == ["0-12", "60+"]
    assert table["mae"].tolist() == [0.5, 2.0] and table["cs1"].tolist() == [1.0, 0.5]


def test_calibration_matches_a_loop_and_the_gaussian_shares():
    rng = np.random.default_rng(2)
    std = rng.uniform(0.5, 6, size=400)
    errors = rng.normal(0, 1, size=400) * std * 1.3  # a model whose ± is 30% too narrow
    result = calibration(errors, std)
    assert result["within_1std"] == pytest.approx(sum(abs(e) <= s for e, s in zip(errors, std)) / 400, abs=1e-12)
    assert result["within_2std"] == pytest.approx(sum(abs(e) <= 2 * s for e, s in zip(errors, std)) / 400, abs=1e-12)
    assert result["gaussian_1std"] == pytest.approx(0.682689492, abs=1e-9)
    assert result["gaussian_2std"] == pytest.approx(0.954499736, abs=1e-9)
    assert result["within_1std"] < result["gaussian_1std"]  # too narrow: fewer faces inside ±1σ
    honest = rng.normal(0, 1, size=20000) * 3.0
    fair = calibration(honest, np.full(20000, 3.0))
    assert fair["within_1std"] == pytest.approx(0.6827, abs=0.01)
    assert fair["within_2std"] == pytest.approx(0.9545, abs=0.005)
    with pytest.raises(ValueError, match="same shape"):
        calibration(np.zeros(3), np.zeros(2))


class FixedLogits(nn.Module):
    """A stand-in network whose output for item i is ``logits[i]`` (read from the image's first pixel)."""

    def __init__(self, logits, config):
        super().__init__()
        self.logits, self.config = logits, config
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return ModelOutput(logits=self.logits[x[:, 0, 0, 0].round().long()])


def test_predict_reads_the_distribution_like_a_float64_loop():
    config = tiny()
    q = config.num_classes
    logits = torch.randn(9, q, dtype=torch.float64) * 2
    items = [{"image": torch.full((3, 16, 16), float(i)), "age": torch.tensor(float(i % 7)),
              "index": torch.tensor(100 + i)} for i in range(9)]
    result = predict(FixedLogits(logits.float(), config), DataLoader(items, batch_size=4))
    classes = [config.age_min + k for k in range(q)]
    probs = reference.age_distribution(logits, config.eq9)
    assert np.allclose(result.predicted, reference.expected_age(probs, classes).numpy(), rtol=0, atol=1e-4)
    assert np.allclose(result.std, reference.age_std(probs, classes).numpy(), rtol=0, atol=1e-4)
    for i in range(9):
        assert result.age[i] == i % 7 and result.index[i] == 100 + i
    assert np.allclose(result.errors, result.predicted - result.age)
    metrics = summarize(result)
    assert metrics["mae"] == pytest.approx(np.abs(result.errors).mean())
    assert metrics["count"] == 9 and len(metrics["cs"]) == 11
    assert metrics["age_groups"]["group"] == ["0-12"] and metrics["age_groups"]["count"] == [9]
    assert metrics["calibration"] == calibration(result.errors, result.std)


def test_a_one_hot_distribution_predicts_its_class_with_no_uncertainty():
    config = tiny()
    logits = torch.full((1, config.num_classes), -1e4)
    logits[0, 6] = 0
    items = [{"image": torch.zeros(3, 16, 16), "age": torch.tensor(6.0), "index": torch.tensor(0)}]
    result = predict(FixedLogits(logits, config), DataLoader(items))
    assert result.predicted[0] == pytest.approx(6.0) and result.std[0] == pytest.approx(0.0, abs=1e-3)


def test_head_similarity_is_the_cosine_of_shifted_maps():
    maps = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    sim = head_similarity(maps)
    ref = reference.head_similarity(maps).numpy()
    assert np.allclose(sim.numpy(), ref, atol=1e-5)
    off = [ref[i, j] for i in range(4) for j in range(4) if i != j]
    assert head_overlap(maps) == pytest.approx(sum(off) / len(off), abs=1e-5)


def test_head_overlap_is_one_for_equal_maps_and_zero_for_disjoint_ones():
    same = torch.rand(2, 1, 4, 4).expand(2, 3, 4, 4)
    assert head_overlap(same) == pytest.approx(1.0, abs=1e-5)
    disjoint = torch.zeros(1, 3, 3, 3)
    for k in range(3):
        disjoint[0, k, k] = 1.0  # head k looks at row k only
    assert head_overlap(disjoint) == pytest.approx(0.0, abs=1e-6)


def test_mask_share_matches_a_loop_at_the_mask_size():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    masks = torch.rand(2, 2, 8, 8) > 0.6
    share = mask_share(maps, masks)
    normalized = reference.normalize_maps(maps)
    for b in range(2):
        for k in range(3):
            for r in range(2):
                inside = sum(normalized[b, k, y, x].item() for y in range(8) for x in range(8) if masks[b, r, y, x])
                assert share[b, k, r].item() == pytest.approx(inside, abs=1e-5)


def test_mask_share_of_a_spread_map_is_the_area_and_of_a_focused_map_one():
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[..., :8, :] = True
    flat = torch.zeros(1, 1, 4, 4)
    assert mask_share(flat, masks).item() == pytest.approx(0.5)
    focused = torch.zeros(1, 1, 16, 16)
    focused[..., 2:6, 3:9] = 1.0
    assert mask_share(focused, masks).item() == pytest.approx(1.0)


def faces_with_masks(n=6, size=16):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, :4], masks[1, :, :3] = True, True
        items.append({"image": torch.from_numpy(rng.random((3, size, size), dtype=np.float32)),
                      "age": torch.tensor(float(i)), "index": torch.tensor(i), "masks": masks})
    return items


def test_ranked_boxes_are_the_boxes_adpf_crops():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(ranked_boxes(attention_maps(model, x), model.config), out.boxes)


def test_attention_report_on_a_model():
    torch.manual_seed(0)
    model = build_model(tiny(variant="attention_only"))
    items = faces_with_masks()
    report = attention_report(model, DataLoader(items, batch_size=4))
    att = attention_maps(model, torch.stack([it["image"] for it in items]))
    assert report["head_overlap"] == pytest.approx(head_overlap(att.maps), abs=1e-4)
    union = torch.stack([it["masks"] for it in items]).any(dim=1, keepdim=True)
    expected = mask_share(att.maps[:, att.order], union)[..., 0].mean(dim=0)
    assert np.allclose(report["region_share"], expected.numpy(), atol=1e-4)
    assert report["region_area"] == pytest.approx(union.float().mean().item())
    with pytest.raises(ValueError, match="no attention maps"):
        attention_report(build_model(tiny(variant="plain_cnn")), DataLoader(items))
    images = torch.stack([it["image"] for it in items])
    assert np.allclose(report["head_entropy"], head_entropy(model, images)[:, att.order].mean(dim=0).numpy(),
                       atol=1e-5)


def test_attention_report_describes_the_boxes_a_model_crops_at():
    """An ADPF with placed boxes (patch_placement="rank_median") crops every face at them: its
    report's boxes hold still (centre spread 0) at the placed sides, while the paper's ADPF with
    the same AttentionNet reports each face's own boxes."""
    from adpf.patches import rank_median_boxes

    torch.manual_seed(0)
    per_face = build_model(tiny(variant="adpf")).eval()
    placed = build_model(tiny(variant="adpf", patch_placement="rank_median")).eval()
    placed.load_state_dict({**per_face.state_dict(), "placed_boxes": placed.placed_boxes})
    items = faces_with_masks()
    images = torch.stack([it["image"] for it in items])
    with torch.no_grad():
        placed.place_boxes(placed.face_boxes(images)[1])
    own = attention_report(per_face, DataLoader(items, batch_size=4))
    fixed = attention_report(placed, DataLoader(items, batch_size=4))
    assert torch.equal(placed.placed_boxes,
                       rank_median_boxes(ranked_boxes(attention_maps(per_face, images), per_face.config), 16))
    sides = (placed.placed_boxes[:, 2] - placed.placed_boxes[:, 0]) / 16
    assert own["box_centre_spread"] > 0 and fixed["box_centre_spread"] == 0
    assert fixed["box_side_median_by_rank"] == pytest.approx(sides.tolist())
    assert fixed["head_entropy"] == pytest.approx(own["head_entropy"])


def loop_entropy_share(weights):
    """Σ_j −a_ij log a_ij over log N, averaged over i: plain float64 loops over a ``(N, N)`` matrix."""
    n = len(weights)
    rows = [-sum(float(a) * math.log(float(a)) for a in row if a > 0) / math.log(n) for row in weights]
    return sum(rows) / n


def test_head_entropy_is_the_mean_row_entropy_of_each_heads_softmax():
    torch.manual_seed(0)
    model = build_model(tiny(variant="attention_only")).double().eval()
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    got = head_entropy(model, images)  # (B, n)
    assert got.shape == (2, 3)
    with torch.no_grad():
        x = model.features(images)
    for k, (head, z) in enumerate(zip(model.rmhha.heads, x.chunk(3, dim=1))):
        weights = head.self_attention.weights(z)
        for b in range(2):
            assert got[b, k].item() == pytest.approx(loop_entropy_share(weights[b]), rel=1e-5)
    # the two ends: zero queries and keys make a head average every pixel alike (1); relative
    # embeddings that favour offset (0, 0) overwhelmingly make every pixel look at itself (0, and
    # no NaN from 0 · log 0)
    with torch.no_grad():
        attention = model.rmhha.heads[0].self_attention
        for conv in (attention.query, attention.key):
            conv.weight.zero_(), conv.bias.zero_()
        attention.rel_h.zero_(), attention.rel_w.zero_()
        assert torch.allclose(head_entropy(model, images)[:, 0], torch.ones(2, dtype=torch.float64))
        h, w = attention.height, attention.width
        attention.rel_h[h - 1], attention.rel_w[w - 1] = 1e4, 1e4  # the rows of offset 0
        attention.query.bias.fill_(1.0)
    assert head_entropy(model, images)[:, 0].abs().max() < 1e-6
    assert torch.isfinite(head_entropy(model, images)).all()


def test_constant_baseline_always_answers_the_mean_training_age():
    train = np.array([20.0, 31.0, 45.0, 60.0])  # mean 39
    errors = constant_baseline(train, np.array([39.0, 10.0, 70.5]))
    assert errors.dtype == np.float64 and errors.tolist() == [0.0, 29.0, -31.5]
    assert mae(errors) == pytest.approx((0 + 29 + 31.5) / 3)
    with pytest.raises(ValueError, match="at least one training age"):
        constant_baseline(np.array([]), np.array([1.0]))


def test_box_coverage_counts_pixels_like_a_loop():
    rng = np.random.default_rng(3)
    regions = torch.from_numpy(rng.random((3, 12, 12)) > 0.5)
    x0, y0 = rng.integers(0, 8, size=(2, 3, 4))
    sides = rng.integers(1, 5, size=(3, 4))
    boxes = torch.from_numpy(np.stack([x0, y0, x0 + sides, y0 + sides], axis=-1))  # (3, 4, 4), some overlapping
    got = box_coverage(boxes, regions)
    counts = {"covered": 0, "regions": 0, "boxes": 0}
    for b in range(3):
        for y in range(12):
            for x in range(12):
                inside = any(bx0 <= x < bx1 and by0 <= y < by1 for bx0, by0, bx1, by1 in boxes[b].tolist())
                counts["covered"] += inside and bool(regions[b, y, x])
                counts["regions"] += bool(regions[b, y, x])
                counts["boxes"] += inside
    assert got == counts
    full = torch.tensor([[[0, 0, 12, 12]]] * 3)
    assert box_coverage(full, regions) == {"covered": counts["regions"], "regions": counts["regions"], "boxes": 3 * 144}
    with pytest.raises(ValueError, match="boxes \\(B, n, 4\\)"):
        box_coverage(boxes[0], regions)


@pytest.mark.parametrize("variant", ["adpf", "fixed_patches"])
def test_patch_reliance_swaps_only_the_patches(variant):
    from adpf.evaluate import PATCH_SWAPS, patch_reliance
    from adpf.losses import predict_age

    torch.manual_seed(0)
    config = tiny(variant=variant)
    model = build_model(config).eval()
    images, ages = torch.rand(6, 3, config.image_size, config.image_size), torch.rand(6) * config.age_max
    found = patch_reliance(model, images, ages)
    assert list(found) == list(PATCH_SWAPS)
    with torch.no_grad():
        out = model(images)
        own = (predict_age(out.logits, config)[0] - ages).abs().mean()
        # face b with the patches of face b - 1, by hand; and with blank ones
        swapped = torch.stack([out.patches[(b - 1) % 6] for b in range(6)])
        other = (predict_age(model.fusion_net(images, swapped).logits, config)[0] - ages).abs().mean()
        blank = model.fusion_net(images, torch.full_like(out.patches, 0.5)).logits
        blank = (predict_age(blank, config)[0] - ages).abs().mean()
    assert found["own patches"] == pytest.approx(float(own), abs=1e-6)
    assert found["another face's patches"] == pytest.approx(float(other), abs=1e-6)
    assert found["blank patches"] == pytest.approx(float(blank), abs=1e-6)
    assert found["another face's patches"] != found["own patches"]  # the patches do reach the estimate


def test_fit_std_scale_makes_one_sigma_hold_68_percent():
    rng = np.random.default_rng(0)
    std = rng.uniform(1, 5, 4000)
    errors = rng.normal(0, 1, 4000) * std * 3.0  # the reported ± is three times too narrow
    scale = fit_std_scale(errors, std)
    assert scale == pytest.approx(3.0, rel=0.05)
    assert np.mean(np.abs(errors) <= scale * std) == pytest.approx(0.6827, abs=0.002)
    # by a loop: between the two sorted ratios |error| / std around the 68.27 % position
    ratios = sorted(abs(e) / s for e, s in zip(errors, std))
    k = math.floor((len(ratios) - 1) * math.erf(1 / math.sqrt(2)))
    assert ratios[k] <= scale <= ratios[k + 1]
    with pytest.raises(ValueError, match="positive stds"):
        fit_std_scale(np.ones(3), np.zeros(3))


def test_box_statistics_and_region_share_match_loops():
    config = get_preset("cpu", image_size=64)
    g = torch.Generator().manual_seed(0)
    sides = torch.randint(10, 39, (30, 5), generator=g)
    x0 = torch.randint(0, 20, (30, 5), generator=g)
    y0 = torch.randint(0, 20, (30, 5), generator=g)
    sides[:4, 0] = round(0.6 * 64)  # four boxes at the largest side
    boxes = torch.stack([x0, y0, x0 + sides, y0 + sides], dim=-1)
    stats = box_statistics(boxes, config)
    flat = sorted(float(s) / 64 for s in sides.flatten())
    assert stats["box_side_median"] == pytest.approx(float(np.median(flat)))
    assert stats["box_at_clamp"] == pytest.approx(sum(s >= 38 / 64 for s in flat) / len(flat))
    for k in range(5):
        assert stats["box_side_median_by_rank"][k] == pytest.approx(float(np.median(sides[:, k].numpy() / 64)))
    spreads = [np.std([(float(b[k, a]) + float(b[k, a + 2])) / 128 for b in boxes], ddof=1)
               for k in range(5) for a in (0, 1)]
    assert stats["box_centre_spread"] == pytest.approx(float(np.mean(spreads)))
    regions = torch.rand(30, 64, 64, generator=g) > 0.7
    share = box_region_share(boxes, regions)
    for i in (0, 7, 29):
        for k in range(5):
            bx0, by0, bx1, by1 = boxes[i, k].tolist()
            on = sum(bool(regions[i, y, x]) for y in range(by0, by1) for x in range(bx0, bx1))
            assert share[i, k] == pytest.approx(on / ((bx1 - bx0) * (by1 - by0)))
