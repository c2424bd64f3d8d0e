"""Shapes, parameter counts, the patch-joining order of FusionNet (Eq. 8), ADPF's wiring, the variants."""

import pytest
import torch

from adpf.attention import HybridAttention
from adpf.cache import attention_config
from adpf.config import get_preset
from adpf.losses import age_estimation_loss, attention_net_loss
from adpf.networks import (ADPF, AttentionNet, BasicBlock, FixedPatchFusion, FusionNet, build_model, conv_block,
                           count_parameters, parameter_table)
from adpf.patches import crop_patches, fixed_boxes, maps_to_boxes

VARIANTS = ("adpf", "attention_only", "plain_cnn", "fixed_patches", "resnet18")


def tiny(**changes):
    return get_preset("cpu", image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3,
                      key_channels=4, value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8),
                      patch_size=8, patch_channels=3, age_max=9, **changes)


def test_parameter_counts_by_hand():
    assert count_parameters(conv_block(3, 4)) == 3 * 4 * 9 + 2 * 4  # conv (no bias) + BN scale, shift
    c_in, c_k, c_v, h, w, hidden = 5, 4, 6, 3, 2, 3
    qkv = 2 * (c_in * c_k + c_k) + (c_in * c_v + c_v)
    rel = (2 * h - 1) * c_k + (2 * w - 1) * c_k
    ca = (c_in * c_v + c_v) + (c_v * hidden + hidden) + (hidden * c_v + c_v)
    assert count_parameters(HybridAttention(c_in, c_k, c_v, h, w, reduction=2)) == qkv + rel + ca
    assert count_parameters(HybridAttention(c_in, c_k, c_v, h, w, 2, mode="self_sum")) == qkv + rel
    config = tiny()
    fc = config.heads * config.x_size ** 2 * config.num_classes + config.num_classes
    stem = count_parameters(AttentionNet(config).stem)
    to_x = 4 * 6 + 2 * 6
    heads = 3 * count_parameters(HybridAttention(2, 4, 4, 4, 4, 2))
    assert count_parameters(AttentionNet(config)) == stem + to_x + heads + 3 + fc  # + the scales a_k


@pytest.mark.parametrize("name,low,high", [("paper", 3_000_000, 20_000_000), ("cpu", 100_000, 1_000_000)])
def test_preset_sizes_within_documented_range(name, low, high):
    rows = {variant: (att, fus, total) for variant, att, fus, total in parameter_table(get_preset(name))}
    assert low <= rows["adpf"][2] <= high
    assert rows["adpf"][2] == rows["attention_only"][2] + rows["fixed_patches"][2]
    assert rows["plain_cnn"][2] < rows["fixed_patches"][2]  # same main stream, minus the patch streams


@pytest.mark.parametrize("name,batch,stream", [("cpu", 3, "strided"), ("paper", 2, "strided"), ("cpu", 3, "resize")])
def test_every_variant_runs_forward_and_backward(name, batch, stream):
    torch.manual_seed(0)
    config = get_preset(name, patch_stream=stream)
    x = torch.rand(batch, 3, config.image_size, config.image_size)
    age = torch.tensor([20.0, 45.0, 70.0])[:batch]
    for variant in VARIANTS:
        model = build_model(config.replace(variant=variant))
        out = model(x)
        assert out.logits.shape == (batch, config.num_classes)
        if variant in ("adpf", "attention_only"):
            maps = out.attention.maps
            assert maps.shape == (batch, config.heads, config.x_size, config.x_size)
        if variant in ("adpf", "fixed_patches"):
            assert out.boxes.shape == (batch, config.heads, 4)
            assert out.patches.shape == (batch, config.heads, 3, config.patch_size, config.patch_size)
        if variant == "attention_only":
            loss = attention_net_loss(out.logits, age, out.attention.maps, config).total
        else:
            loss = age_estimation_loss(out.logits, age, config).total
        loss.backward()
        assert torch.isfinite(loss)
        trained = [p for p in model.parameters() if p.grad is not None]
        assert trained and all(torch.isfinite(p.grad).all() for p in trained)


@pytest.mark.parametrize("variant,stream", [(v, "strided") for v in VARIANTS] +
                         [("adpf", "resize"), ("fixed_patches", "resize")])
def test_every_variant_trains_under_cpu_bf16_autocast(variant, stream):
    """Regression: antialiased interpolation has no bf16 CPU kernel, so the patch variants crashed under autocast."""
    torch.manual_seed(0)
    config = get_preset("cpu", variant=variant, patch_stream=stream)
    model = build_model(config).eval()  # eval: BatchNorm uses its running statistics in both runs
    x = torch.rand(3, 3, config.image_size, config.image_size)
    age = torch.tensor([20.0, 45.0, 70.0])
    with torch.no_grad():
        reference = model(x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = age_estimation_loss(out.logits.float(), age, config).total
    assert out.logits.dtype == torch.bfloat16  # autocast did run the network in bf16
    torch.testing.assert_close(out.logits.float(), reference, atol=0.1, rtol=0.05)
    loss.backward()
    trained = [p for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and trained and all(torch.isfinite(p.grad).all() for p in trained)


def stage_inputs(net, x, patches):
    seen = []
    hooks = [stage.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
             for stage in net.stages]
    net(x, patches)
    for h in hooks:
        h.remove()
    return seen


def test_patch_k_joins_at_stage_k():
    torch.manual_seed(0)
    config = tiny()
    net = FusionNet(config).eval()
    x = torch.rand(2, 3, 16, 16)
    patches = torch.rand(2, 3, 3, 8, 8)
    base = stage_inputs(net, x, patches)
    main_widths = (4, 4, 6)  # stem, then stage outputs
    for k in range(3):
        # R = Concat[I, P]: the last patch_channels of stage k's input are patch stream k's features
        assert base[k].shape[1] == main_widths[k] + config.patch_channels
        p = net.patch_streams[k](2 * patches[:, k] - 1)
        torch.testing.assert_close(base[k][:, main_widths[k]:], p.detach())
        moved = patches.clone()
        moved[:, k] = torch.rand(2, 3, 8, 8)
        after = stage_inputs(net, x, moved)
        for j in range(3):
            if j < k:
                torch.testing.assert_close(after[j], base[j])  # earlier stages never see P_k
            else:
                assert not torch.allclose(after[j], base[j])  # stage k and all later ones do
    assert net.input_sizes == [8, 4, 4]


@pytest.mark.parametrize("name,strides", [("cpu", [0, 0, 1, 2, 2]), ("paper", [0, 0, 1, 2, 3])])
def test_strided_streams_learn_the_way_down_to_their_stage(name, strides):
    config = get_preset(name)
    strided, resized = FusionNet(config), FusionNet(config.replace(patch_stream="resize"))
    p, c = config.patch_size, config.patch_channels
    block = 9 * c * c + 2 * c  # a conv block at the stream's width (conv without bias + BatchNorm)
    for k, size in enumerate(strided.input_sizes):
        s, r = strided.patch_streams[k], resized.patch_streams[k]
        assert [b[0].stride[0] for b in s.blocks[1:]].count(2) == strides[k]
        assert len(s.blocks) == max(2, 1 + strides[k]) and len(r.blocks) == 2
        assert count_parameters(s) == count_parameters(r) + max(0, strides[k] - 1) * block
        side = p
        for _ in range(strides[k]):
            side = (side + 1) // 2
        assert s.side == side
        if strides[k]:
            assert side >= size > (side + 1) // 2  # as far down as halving goes without passing the stage
        for stream in (s, r):
            out = stream(torch.rand(2, 3, p, p))
            assert out.shape == (2, c, size, size)
    # AttentionNet does not read the field: both designs train on one stage-1 model (adpf.cache)
    assert attention_config(config.replace(patch_stream="resize")) == attention_config(config)


def adaptive_pool_loop(x, size):
    """Plain float64 loop: output cell i averages input rows floor(i·n/size) .. ceil((i+1)·n/size) - 1 (same for columns)."""
    n = x.shape[-1]
    out = torch.zeros(*x.shape[:-2], size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            r0, r1 = (i * n) // size, -((-(i + 1) * n) // size)
            c0, c1 = (j * n) // size, -((-(j + 1) * n) // size)
            out[..., i, j] = x[..., r0:r1, c0:c1].double().mean(dim=(-2, -1))
    return out


def test_a_strided_stream_ends_with_an_adaptive_pool_where_sides_do_not_divide():
    torch.manual_seed(0)
    config = get_preset("cpu")  # P_4: 24 -> 12 -> 6 -> pool -> 4
    stream = FusionNet(config).patch_streams[3].double().eval()
    patch = torch.rand(2, 3, 24, 24, dtype=torch.float64, requires_grad=True)
    features = stream.blocks(patch)
    assert features.shape[-1] == 6
    out = stream(patch)
    torch.testing.assert_close(out, adaptive_pool_loop(features.detach(), 4), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(patch.grad).all() and patch.grad.abs().sum() > 0


def test_plain_cnn_has_the_same_main_stream():
    config = tiny()
    plain, fusion = FusionNet(config, use_patches=False), FusionNet(config)
    assert plain.patch_streams is None and plain.input_sizes == fusion.input_sizes
    assert [s[1][0].out_channels for s in plain.stages] == [s[1][0].out_channels for s in fusion.stages]
    assert [s[0][0].in_channels for s in plain.stages] == [s[0][0].in_channels - 3 for s in fusion.stages]
    with pytest.raises(ValueError, match="takes no patches"):
        plain(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="needs patches"):
        fusion(torch.rand(1, 3, 16, 16))


def test_adpf_crops_the_ranked_maps_and_freezes_attention():
    torch.manual_seed(0)
    config = tiny()
    model = ADPF(config)
    with torch.no_grad():
        model.attention_net.rmhha.scales.copy_(torch.tensor([0.2, 0.9, 0.5]))
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    out = model(x)
    assert out.attention.order.tolist() == [1, 2, 0]
    expected = maps_to_boxes(out.attention.maps[:, [1, 2, 0]], 16, config.patch_threshold,
                             config.patch_min_frac, config.patch_max_frac)
    assert torch.equal(out.boxes, expected)
    torch.testing.assert_close(out.patches, crop_patches(x, expected, config.patch_size))
    torch.testing.assert_close(out.attention_logits, model.attention_net(x).logits)
    # stage 2: attention frozen, in eval mode even after .train(), no graph through it
    model.freeze_attention().train()
    assert not model.attention_net.training and model.fusion_net.training
    out = model(x)
    assert not out.attention.maps.requires_grad
    age_estimation_loss(out.logits, torch.tensor([3.0, 6.0]), config).total.backward()
    assert all(p.grad is None for p in model.attention_net.parameters())
    assert all(p.grad is not None for p in model.fusion_net.parameters())


@pytest.mark.parametrize("rank_by", ["value", "abs"])
def test_a_negative_scale_crops_the_region_the_fc_weighs_most(rank_by):
    """Regression: boxes came from HA_k, so with a_k < 0 the crop landed on HA_k·a_k's most negative region."""
    config = tiny(rank_by=rank_by, patch_threshold=0.75)
    model = ADPF(config).eval()
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, :, 0, 0] = 1.0  # every head: HA_k is highest top-left...
    maps[0, :, 3, 3] = -1.0  # ...and lowest bottom-right
    scales = torch.tensor([-2.0, 0.5, 1.0])

    def designed(module, inputs, output):
        output.maps, output.weighted = maps, maps * scales[None, :, None, None]

    with torch.no_grad():
        model.attention_net.rmhha.scales.copy_(scales)
    model.attention_net.rmhha.register_forward_hook(designed)
    out = model(torch.rand(1, 3, 16, 16))
    expected_order = [2, 1, 0] if rank_by == "value" else [0, 2, 1]
    assert out.attention.order.tolist() == expected_order
    for k, head in enumerate(expected_order):
        x0, y0, x1, y1 = out.boxes[0, k].tolist()
        # where the FC sees the largest value of HA_k · a_k: top-left for a_k > 0, bottom-right for a_k < 0
        p = 14 if scales[head] < 0 else 1
        assert x0 <= p < x1 and y0 <= p < y1, (head, out.boxes[0, k])
        assert not (x0 <= 15 - p < x1 and y0 <= 15 - p < y1)  # nor does it reach the opposite corner


def test_boxes_found_beforehand_are_cropped_as_found_and_skip_attention_net():
    """ADPF.forward(x, boxes): the boxes ADPF.attend finds give the logits forward(x) gives;
    other boxes give other patches; AttentionNet does not run; not before stage 2."""
    torch.manual_seed(0)
    config = tiny()
    model = ADPF(config)
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(ValueError, match="frozen AttentionNet"):
        model(x, boxes=torch.zeros(3, 3, 4, dtype=torch.int64))
    model.freeze_attention().eval()
    _, boxes = model.attend(x)
    own = model(x)
    calls = []
    model.attention_net.register_forward_hook(lambda *_: calls.append(1))
    given = model(x, boxes=boxes)
    assert calls == [] and given.attention is None and given.attention_logits is None
    assert torch.equal(given.boxes, own.boxes)
    torch.testing.assert_close(given.logits, own.logits, rtol=0, atol=0)
    other = model(x, boxes=fixed_boxes(3, 16).expand(3, -1, -1))
    torch.testing.assert_close(other.patches, crop_patches(x, fixed_boxes(3, 16).expand(3, -1, -1), 8))


def test_stage_two_forward_reads_nothing_back_to_the_host():
    """ADPF's stage-2 forward (frozen AttentionNet, maps → boxes → crops → FusionNet) runs on the meta
    device, where tensors hold no data: any host read of a value (``.item()``, boolean masks) raises."""
    config = get_preset("cpu")
    model = ADPF(config).to("meta").freeze_attention().train()
    out = model(torch.rand(2, 3, 64, 64, device="meta"))
    assert out.logits.shape == (2, config.num_classes) and out.boxes.device.type == "meta"


def test_fixed_patches_are_the_same_in_every_image():
    config = tiny()
    model = FixedPatchFusion(config)
    out = model(torch.rand(3, 3, 16, 16))
    assert torch.equal(out.boxes[0], fixed_boxes(3, 16)) and torch.equal(out.boxes[2], out.boxes[0])


def test_ablations_and_heads_are_switches():
    assert all(h.channel_attention is None
               for h in AttentionNet(tiny(attention="self_sum")).rmhha.heads)
    unranked = AttentionNet(tiny(ranking=False))
    with torch.no_grad():
        unranked.rmhha.scales.copy_(torch.tensor([0.1, 0.9, 0.5]))
    assert unranked(torch.rand(1, 3, 16, 16)).attention.order.tolist() == [0, 1, 2]
    for k in (1, 4, 8):
        config = get_preset("cpu", heads=k)
        model = build_model(config)
        assert len(model.attention_net.rmhha.heads) == k and len(model.fusion_net.stages) == k
    assert isinstance(build_model(tiny(variant="attention_only")), AttentionNet)


def test_bad_images_raise_clear_errors():
    model = build_model(tiny())
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_the_reference_resnet_is_resnet18_at_about_adpfs_size():
    for name in ("cpu", "paper"):
        config = get_preset(name)
        rows = {variant: total for variant, _, _, total in parameter_table(config)}
        assert 0.85 < rows["resnet18"] / rows["adpf"] < 1.15, name
        model = build_model(config.replace(variant="resnet18"))
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        w = config.reference_width
        assert [b.body[0].out_channels for b in blocks] == [w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w]
        # by hand: stem, 8 blocks (two 3x3 convs + BN each, a 1x1 shortcut where the width changes), FC
        def block(c_in, c_out):
            return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + (c_in * c_out + 2 * c_out if c_in != c_out else 0)
        widths = [w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w]
        expected = 27 * w + 2 * w + sum(block(a, b) for a, b in zip([w] + widths[:-1], widths))
        expected += 8 * w * config.num_classes + config.num_classes
        assert count_parameters(model) == expected
    # the first stage works at 64x64 at both input sizes
    for name, size in (("cpu", 64), ("paper", 128)):
        config = get_preset(name, variant="resnet18")
        model = build_model(config)
        assert model.stem(torch.rand(1, 3, size, size)).shape[-1] == 64


def test_a_basic_block_adds_its_input():
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(block(x), torch.relu(block.body(x) + x))
    down = BasicBlock(4, 6, stride=2).eval()
    assert torch.allclose(down(x), torch.relu(down.body(x) + down.shortcut(x)))
    assert down(x).shape == (2, 6, 4, 4)


def test_the_flatten_head_reads_every_position_of_the_last_features():
    torch.manual_seed(0)
    config = tiny(fusion_head="flatten")
    net = FusionNet(config, use_patches=False).eval()
    x = torch.rand(2, 3, config.image_size, config.image_size)
    features = net.stem(2 * x - 1)
    for stage in net.stages:
        features = stage(features)
    assert net.fc.in_features == features[0].numel()
    assert torch.allclose(net(x).logits, net.fc(features.flatten(1)))
    pooled = FusionNet(tiny(), use_patches=False)
    assert pooled.fc.in_features == features.shape[1]


def test_a_stride_one_fusion_stem_keeps_the_first_stage_at_full_resolution():
    config = tiny(fusion_stem_stride=1)
    net = FusionNet(config)
    assert net.input_sizes[0] == config.image_size and FusionNet(tiny()).input_sizes[0] == config.image_size // 2
    x = torch.rand(2, 3, config.image_size, config.image_size)
    model = build_model(config)
    assert model(x).logits.shape == (2, config.num_classes)


def test_rank_median_placement_crops_every_face_at_the_placed_boxes(tmp_path):
    """patch_placement="rank_median": no crop before boxes are placed; place_boxes keeps each rank's
    median of the boxes it is given (patches.rank_median_boxes) and every face is then cropped
    there; the boxes are a buffer of the checkpoint, loaded back with weights_only."""
    from adpf.checkpoint import checkpoint_dict, load_model, save_checkpoint
    from adpf.patches import rank_median_boxes

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="patch_placement must be one of"):
        tiny(patch_placement="per_rank")
    model = ADPF(tiny(patch_placement="rank_median")).freeze_attention().eval()
    x = torch.rand(5, 3, 16, 16)
    with pytest.raises(RuntimeError, match="none are placed: call place_boxes"):
        model(x)
    with pytest.raises(ValueError, match="needs patch_placement='rank_median'"):
        ADPF(tiny()).place_boxes(torch.zeros(2, 3, 4, dtype=torch.int64))
    _, own = model.face_boxes(x)
    model.place_boxes(own)
    out = model(x)
    placed = rank_median_boxes(own, 16)
    assert torch.equal(model.placed_boxes, placed)
    assert torch.equal(out.boxes, placed.expand(5, -1, -1))
    torch.testing.assert_close(out.patches, crop_patches(x, placed.expand(5, -1, -1), 8), rtol=0, atol=0)
    assert out.attention is not None  # AttentionNet still runs: its maps are the model's to show
    path = save_checkpoint(checkpoint_dict(model.config, model.state_dict(), "fusion", 1), tmp_path / "m.pt")
    loaded = load_model(path).eval()
    assert loaded.boxes_placed and torch.equal(loaded.placed_boxes, placed)
    torch.testing.assert_close(loaded(x).logits, out.logits, rtol=0, atol=0)
    assert "placed_boxes" not in ADPF(tiny()).state_dict()  # the paper's ADPF keeps its checkpoints' layout


def test_residual_fusion_stages_are_basic_blocks_over_the_same_widths_and_strides():
    torch.manual_seed(0)
    plain, residual = FusionNet(tiny(fusion_stem_stride=1)), FusionNet(tiny(fusion_stem_stride=1, fusion_block="residual"))
    assert residual.input_sizes == plain.input_sizes
    extra = tiny().patch_channels
    for k, (p, r) in enumerate(zip(plain.stages, residual.stages)):
        assert isinstance(r, BasicBlock)
        assert (r.body[0].in_channels, r.body[0].out_channels, r.body[0].stride) == \
            (p[0][0].in_channels, p[0][0].out_channels, p[0][0].stride)
        assert r.body[0].in_channels == (tiny().fusion_channels[k - 1] if k else tiny().fusion_channels[0]) + extra
    x = torch.rand(2, 3, 16, 16)
    patches = torch.rand(2, 3, 3, 8, 8)
    features = residual.stem(2 * x - 1)
    for k, stage in enumerate(residual.stages):
        p = residual.patch_streams[k](2 * patches[:, k] - 1)
        joined = torch.cat([features, p], dim=1)
        features = stage(joined)
        assert torch.allclose(features, torch.relu(stage.body(joined) + stage.shortcut(joined)))
    assert torch.allclose(residual(x, patches).logits, residual.fc(features.mean(dim=(2, 3))), atol=1e-6)
    # every parameter learns, the patch streams' included: a start that silences a stream (a
    # zero BatchNorm scale before its ReLU) would leave all of its gradients at exactly zero
    residual(x, patches).logits.square().sum().backward()
    dead = [name for name, p in residual.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    with pytest.raises(ValueError, match="fusion_block"):
        tiny(fusion_block="dense")


def test_patch_dropout_drops_whole_faces_in_training_and_nothing_in_evaluation():
    """config.patch_dropout (open choice 22): in training each face's patch features at a stage are
    all zero or all scaled by 1 / (1 - p), about p of the faces dropped, each stage drawing its own;
    the gradient reaches a kept face's patch stream scaled alike and a dropped one's not at all;
    in evaluation FusionNet is the one without dropout."""
    from adpf.networks import drop_patches
    torch.manual_seed(0)
    features = torch.randn(4000, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    out = drop_patches(features, 0.25, training=True)
    out.sum().backward()
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    assert 0.23 < dropped.double().mean() < 0.27
    torch.testing.assert_close(out[kept], features[kept] / 0.75)
    torch.testing.assert_close(features.grad[kept], torch.full_like(features[kept], 1 / 0.75))
    assert (features.grad[dropped] == 0).all()
    assert drop_patches(features, 0.25, training=False) is features
    assert drop_patches(features, 0.0, training=True) is features
    with pytest.raises(ValueError, match="patch_dropout must be a number in"):
        tiny(patch_dropout=1.0)

    config = tiny(patch_dropout=0.5)
    net, plain = FusionNet(config), FusionNet(tiny())
    plain.load_state_dict(net.state_dict())
    x, patches = torch.rand(64, 3, 16, 16), torch.rand(64, 3, 3, 8, 8)
    net.eval(), plain.eval()
    torch.testing.assert_close(net(x, patches).logits, plain(x, patches).logits, rtol=0, atol=0)
    net.train()
    inputs = stage_inputs(net, x, patches)
    zero = [(inp[:, -config.patch_channels:] == 0).flatten(1).all(1) for inp in inputs]  # (64,) a stage
    assert all(10 < z.sum() < 54 for z in zero) and not torch.equal(zero[0], zero[1])
