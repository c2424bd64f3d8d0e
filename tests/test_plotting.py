"""The book's plotting helpers draw what they are given, where they are told."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from adpf import plotting


def test_as_image_takes_the_library_layout_and_uint8():
    chw = torch.rand(3, 5, 7)
    assert np.allclose(plotting.as_image(chw), chw.numpy().transpose(1, 2, 0))
    u8 = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert plotting.as_image(u8).max() == 1.0
    with pytest.raises(ValueError, match="expected an image"):
        plotting.as_image(np.zeros((2, 2, 2, 2)))


def test_overlay_map_stretches_cells_and_normalises():
    fig, ax = matplotlib.pyplot.subplots()
    heat = torch.tensor([[0.0, 2.0], [4.0, 8.0]])
    shown = plotting.overlay_map(ax, torch.zeros(3, 4, 6), heat).get_array()
    assert shown.shape == (4, 6)
    # each map cell covers a 2x3 block; min-max normalised: 0, 0.25, 0.5, 1
    assert np.allclose(shown[:2, :3], 0.0) and np.allclose(shown[:2, 3:], 0.25)
    assert np.allclose(shown[2:, :3], 0.5) and np.allclose(shown[2:, 3:], 1.0)
    matplotlib.pyplot.close(fig)


def test_overlay_masks_colours_only_the_mask():
    fig, ax = matplotlib.pyplot.subplots()
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    plotting.overlay_masks(ax, np.zeros((8, 8, 3)), masks, labels=["a", "b"])
    first = ax.images[1].get_array()  # images[0] is the face
    assert first.shape == (8, 8, 4)
    assert (first[:4, :, 3] > 0).all() and (first[4:, :, 3] == 0).all()
    assert np.allclose(first[0, 0, :3], plotting.region_color(0))
    matplotlib.pyplot.close(fig)


def test_draw_boxes_puts_rectangles_at_the_corners():
    fig, ax = matplotlib.pyplot.subplots()
    plotting.draw_boxes(ax, torch.tensor([[1.0, 2.0, 5.0, 9.0]]), labels=["M1"])
    (rect,) = ax.patches
    assert rect.get_xy() == (1.0, 2.0) and rect.get_width() == 4.0 and rect.get_height() == 7.0
    matplotlib.pyplot.close(fig)


def test_show_faces_checks_titles_and_hides_spare_panels():
    fig = plotting.show_faces(torch.rand(5, 3, 8, 8), titles=list("abcde"), ncols=3)
    visible = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(visible) == 5
    assert [ax.get_title() for ax in visible] == list("abcde")
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        plotting.show_faces(torch.rand(2, 3, 8, 8), titles=["x"])


def test_map_grid_puts_map_r_c_over_face_c():
    faces = torch.rand(3, 3, 8, 8)
    maps = torch.zeros(2, 3, 2, 2)
    maps[1, 2, 0, 0] = 1.0  # only row 1, column 2 has a hot cell (top left)
    fig = plotting.map_grid(faces, maps, row_labels=["a", "b"], col_labels=["x", "y", "z"])
    axes = np.array(fig.axes).reshape(2, 3)
    shown = axes[1, 2].images[1].get_array()
    assert np.allclose(shown[:4, :4], 1.0) and np.allclose(shown[4:, :], 0.0)
    assert np.allclose(axes[0, 1].images[0].get_array(), faces[1].numpy().transpose(1, 2, 0))
    assert [ax.get_title() for ax in axes[0]] == ["x", "y", "z"]
    assert [t.get_text() for t in axes[1, 0].texts] == ["b"]
    with pytest.raises(ValueError, match="3 columns"):
        plotting.map_grid(faces, torch.zeros(2, 2, 2, 2))
    matplotlib.pyplot.close(fig)


def test_show_patches_draws_face_boxes_and_framed_patches():
    faces = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[[0, 0, 8, 8], [4, 4, 12, 12]]] * 2)
    patches = torch.rand(2, 2, 3, 6, 6)
    fig = plotting.show_patches(faces, boxes, patches, colors=["red", "blue"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert len(axes[1, 0].patches) == 2  # the two boxes on the face
    assert np.allclose(axes[1, 2].images[0].get_array(), patches[1, 1].numpy().transpose(1, 2, 0))
    assert [ax.get_title() for ax in axes[0, 1:]] == ["P1", "P2"]
    assert matplotlib.colors.same_color(axes[0, 2].spines["left"].get_edgecolor(), "blue")
    with pytest.raises(ValueError, match="do not agree"):
        plotting.show_patches(faces[:1], boxes, patches)
    matplotlib.pyplot.close(fig)


def test_plot_cs_draws_one_curve_per_label():
    fig, ax = matplotlib.pyplot.subplots()
    plotting.plot_cs(ax, {"a": [0.1, 0.5, 1.0], "b": [0.0, 0.2]})
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    assert np.allclose(ax.lines[0].get_xydata(), [[0, 0.1], [1, 0.5], [2, 1.0]])
    matplotlib.pyplot.close(fig)


def test_draw_learning_paths_gives_patch_k_a_path_from_stage_k_to_fc():
    fig, ax = matplotlib.pyplot.subplots()
    plotting.draw_learning_paths(ax, sizes=[8, 4, 4], widths=[16, 32, 32])
    assert len(ax.patches) == 5  # stem, three stages, FC
    lengths = [line.get_xdata()[1] - line.get_xdata()[0] for line in ax.lines]
    assert len(lengths) == 3 and lengths[0] > lengths[1] > lengths[2] > 0
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("P")] == ["P1", "P2", "P3"]
    matplotlib.pyplot.close(fig)


def test_draw_pipeline_has_every_labelled_part_in_ranked_rows():
    from matplotlib.patches import FancyArrowPatch

    n = 3
    image, maps = torch.rand(3, 16, 16), torch.rand(n, 4, 4)
    boxes = torch.tensor([[0, 0, 8, 8], [4, 4, 12, 12], [8, 2, 16, 10]])
    patches = torch.rand(n, 3, 6, 6)
    fig = plotting.draw_pipeline(image, maps, boxes, patches, age="41 years")
    titled = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert sorted(titled) == ["M1", "M2", "M3", "P1", "P2", "P3", "aligned face"]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("AttentionNet") for t in texts) and "FusionNet" in texts
    assert [t for t in texts if t.startswith("stage")] == ["stage 1", "stage 2", "stage 3"]
    assert "41 years" in texts
    for k in range(n):
        # row k: map M_k over the face with box k in head k's colour, and patch P_k beside it
        m, p = titled[f"M{k + 1}"], titled[f"P{k + 1}"]
        assert abs(m.get_position().y0 - p.get_position().y0) < 1e-9
        (box,) = m.patches
        assert box.get_xy() == tuple(boxes[k, :2].tolist())
        assert matplotlib.colors.same_color(box.get_edgecolor(), plotting.head_color(k))
        assert np.allclose(p.images[0].get_array(), patches[k].numpy().transpose(1, 2, 0))
    assert titled["M1"].get_position().y0 > titled["M3"].get_position().y0  # M1 on top
    # face -> AttentionNet, AttentionNet -> each map, map -> patch, patch -> stage, face -> main stream
    arrows = [a for a in fig.artists if isinstance(a, FancyArrowPatch)]
    assert len(arrows) == 2 + 3 * n
    with pytest.raises(ValueError, match="one of each per head"):
        plotting.draw_pipeline(image, maps, boxes[:2], patches)
    matplotlib.pyplot.close(fig)


def stage_curves_rows(models):
    import pandas as pd

    rows = []
    for k, model in enumerate(models):
        stages = [("attention", 3), ("fusion", 3)] if model.startswith("ADPF") else [("single", 3)]
        for seed in (0, 1):
            for stage, epochs in stages:
                for epoch in range(1, epochs + 1):
                    rows.append({"model": model, "seed": seed, "stage": stage, "epoch": epoch,
                                 "val_mae": 10 - epoch + 0.1 * k + 0.2 * seed})
    return pd.DataFrame(rows)


def test_plot_stage_curves_gives_every_model_its_own_colour_and_one_legend_below():
    import itertools

    import matplotlib
    import numpy as np

    from adpf.plotting import plot_stage_curves

    order = ["ADPF", "ADPF w/o ranking", "ADPF w/SA", "ADPF w/o diversity loss",
             "fixed patches", "plain CNN", "AttentionNet alone"]
    fig = plot_stage_curves(stage_curves_rows(order), order, constant=11.0)
    assert [ax.get_legend() for ax in fig.axes] == [None, None] and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(order) <= set(labels) and "always the mean age" in labels
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    # below both panels' axes and their tick labels, and as wide as the figure at most
    assert all(legend.y1 <= ax.get_tightbbox(renderer).y0 for ax in fig.axes)
    assert legend.width <= fig.bbox.width and all(t.get_fontsize() >= 10 for t in fig.legends[0].get_texts())
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in order:
                colours.setdefault(line.get_label(), matplotlib.colors.to_rgb(line.get_color()))
    assert len(colours) == len(order)
    assert min(np.linalg.norm(np.subtract(a, b))
               for a, b in itertools.combinations(colours.values(), 2)) >= 0.25
    # stage 1 draws ADPF's AttentionNet and the two ablations with their own, nothing else
    assert {line.get_label() for line in fig.axes[0].get_lines()} - {"always the mean age"} == {
        "ADPF", "ADPF w/SA", "ADPF w/o diversity loss"}
    matplotlib.pyplot.close(fig)


def test_plot_stage_curves_draws_the_stage1_of_the_models_named():
    import matplotlib

    from adpf.plotting import plot_stage_curves

    order = ["ADPF, SGD", "ADPF, AdamW"]
    fig = plot_stage_curves(stage_curves_rows(order), order, constant=11.0, stage1=order)
    for ax in fig.axes:
        assert {line.get_label() for line in ax.get_lines()} - {"always the mean age"} == set(order)
    matplotlib.pyplot.close(fig)


def overlapping(texts, renderer) -> list[tuple[str, str]]:
    """The pairs of non-empty ``texts`` whose drawn boxes overlap."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


@pytest.mark.parametrize("heads", [5, 8])
def test_attention_share_labels_do_not_overlap(heads):
    # Fig 7.3 once printed its five head labels vertically, on top of each other
    from adpf.data.synthetic import REGION_NAMES

    rng = np.random.default_rng(0)
    share = 0.3 + 0.01 * rng.standard_normal((7, heads))
    lift = 1 + 0.1 * rng.standard_normal((heads, len(REGION_NAMES)))
    fig = plotting.plot_attention_share(np.arange(7), share, 0.3, lift, REGION_NAMES)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left, right = fig.axes[:2]
    rows = right.get_yticklabels()
    assert [t.get_text() for t in rows] == [f"head {k + 1}" for k in range(heads)]
    assert overlapping(rows, renderer) == []
    assert overlapping(right.get_xticklabels(), renderer) == []
    assert overlapping(left.get_legend().get_texts(), renderer) == []
    assert np.allclose(left.lines[0].get_ydata(), share[:, 0])  # head 1's line is head 1's shares
    matplotlib.pyplot.close(fig)


def wcag_luminance(color) -> float:
    """WCAG 2 relative luminance, written out here as the tests' own reference."""
    import matplotlib.colors

    rgb = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in matplotlib.colors.to_rgb(color)]
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def test_ink_on_picks_the_ink_of_higher_contrast():
    from adpf.plotting import head_color, ink_on

    def contrast(a, b):
        hi, lo = sorted((wcag_luminance(a), wcag_luminance(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    assert ink_on("white") == "black" and ink_on("black") == "white"
    for color in [head_color(k) for k in range(10)] + ["#808080", "#ffff00", "#000080"]:
        ink = ink_on(color)
        other = "white" if ink == "black" else "black"
        assert contrast(ink, color) >= contrast(other, color), color


def test_text_color_darkens_a_light_head_colour_to_the_contrast_asked_and_keeps_its_hue():
    import colorsys

    from adpf.plotting import head_color, text_color

    for k in range(10):
        color = head_color(k)
        for ratio in (3.0, 3.5, 4.5):
            dark = text_color(color, ratio)
            assert 1.05 / (wcag_luminance(dark) + 0.05) >= ratio
            # the hue is the head's; a colour that already passes is returned as it is
            assert abs(colorsys.rgb_to_hsv(*dark)[0] - colorsys.rgb_to_hsv(*color)[0]) < 1e-6 or min(dark) == max(dark)
            if 1.05 / (wcag_luminance(color) + 0.05) >= ratio:
                assert dark == tuple(color)
    assert text_color("white") != (1.0, 1.0, 1.0) and text_color("black") == (0.0, 0.0, 0.0)


def test_plot_head_entropy_draws_one_line_per_seed_one_colour_per_group_and_the_flat_level():
    entropies = {"default": [[0.95, 0.93, 0.998, 0.999, 0.999], [0.93, 0.994, 0.999, 0.999, 0.998]],
                 "woken": [[0.86, 0.87, 0.94, 0.94, 0.97]]}
    fig = plotting.plot_head_entropy(entropies, flat=0.99)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_linestyle() != "--"]
    assert len(lines) == 3
    assert [list(line.get_ydata()) for line in lines] == [v for seeds in entropies.values() for v in seeds]
    assert list(lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(dashed.get_ydata()) == [0.99, 0.99]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["default", "woken", "flat: within 1% of uniform"]
    matplotlib.pyplot.close(fig)


def test_plot_box_layouts_draws_every_box_in_its_ranks_colour_and_labels_the_first_set():
    seeds = [[[24, 20, 37, 33], [28, 4, 41, 17]], [[25, 20, 38, 33], [28, 5, 41, 18]]]
    face = np.zeros((64, 64, 3))
    fig = plotting.plot_box_layouts({"placed": seeds, "fixed": [[[2, 3, 21, 22], [40, 3, 59, 22]]]}, 64,
                                    backgrounds={"fixed": face})
    placed, fixed = fig.axes
    assert [a.get_title() for a in fig.axes] == ["placed", "fixed"]
    rects = [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in placed.patches]
    assert rects == [(24, 20, 13, 13), (28, 4, 13, 13), (25, 20, 13, 13), (28, 5, 13, 13)]
    colours = [r.get_edgecolor()[:3] for r in placed.patches]
    assert colours[0] == colours[2] == pytest.approx(plotting.head_color(0))
    assert colours[1] == colours[3] == pytest.approx(plotting.head_color(1))
    assert [t.get_text() for t in placed.texts] == ["P1", "P2"]
    assert placed.get_images()[0].get_array().shape == (64, 64)  # the empty frame
    assert fixed.get_images()[0].get_array().shape == (64, 64, 3) and len(fixed.patches) == 2
    matplotlib.pyplot.close(fig)


def test_plot_by_heads_draws_each_settings_means_and_sample_stds_in_its_own_style():
    import matplotlib.pyplot
    import pandas as pd

    rng = np.random.default_rng(0)
    settings = {name: pd.DataFrame({"heads": np.repeat([1, 2, 5], 3), "mae": rng.uniform(3, 9, 9)})
                for name in ("first", "second")}
    fig = plotting.plot_by_heads(settings)
    ax = fig.axes[0]
    lines = list(ax.containers)  # one ErrorbarContainer per setting
    assert len(lines) == 2
    colors = set()
    for container, rows in zip(lines, settings.values()):
        line, _, (bars,) = container
        x, y = line.get_data()
        means = rows.groupby("heads")["mae"].mean()
        stds = rows.groupby("heads")["mae"].std(ddof=1)
        np.testing.assert_allclose(np.round(np.asarray(x, dtype=float)), means.index)
        np.testing.assert_allclose(np.asarray(y, dtype=float), means.to_numpy())
        spans = [seg[1, 1] - seg[0, 1] for seg in bars.get_segments()]
        np.testing.assert_allclose(spans, 2 * stds.to_numpy())
        colors.add(line.get_color())
    assert len(colors) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["first", "second"]
    assert list(ax.get_xticks()) == [1, 2, 5]
    matplotlib.pyplot.close(fig)


def test_plot_fit_curves_draws_each_settings_mean_training_and_validation_curves():
    import matplotlib.pyplot
    import pandas as pd

    rng = np.random.default_rng(0)
    settings = {name: pd.DataFrame({"seed": np.repeat([0, 1, 2], 4), "epoch": np.tile([1, 2, 3, 4], 3),
                                    "train_mae": rng.uniform(2, 6, 12), "val_mae": rng.uniform(3, 7, 12)})
                for name in ("paper's", "dropped")}
    fig = plotting.plot_fit_curves(settings)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == sorted(f"{n}: {c}" for n in settings for c in ("training", "validation"))
    for name, rows in settings.items():
        for curve, column, style in (("validation", "val_mae", "-"), ("training", "train_mae", "--")):
            line = lines[f"{name}: {curve}"]
            x, y = line.get_data()
            means = rows.groupby("epoch")[column].mean()
            np.testing.assert_allclose(np.asarray(x, dtype=float), means.index)
            np.testing.assert_allclose(np.asarray(y, dtype=float), means.to_numpy())
            assert line.get_linestyle() == style
        assert lines[f"{name}: training"].get_color() == lines[f"{name}: validation"].get_color()
    assert lines["paper's: validation"].get_color() != lines["dropped: validation"].get_color()
    band = ax.collections[0].get_paths()[0].vertices  # ± one std of the first setting's validation MAE
    by = settings["paper's"].groupby("epoch")["val_mae"]
    assert band[:, 1].max() == pytest.approx((by.mean() + by.std()).max())
    assert band[:, 1].min() == pytest.approx((by.mean() - by.std()).min())
    matplotlib.pyplot.close(fig)
