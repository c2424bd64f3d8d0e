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
    assert np.allclose(first[0, 0, :3], plotting.head_color(0))
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
