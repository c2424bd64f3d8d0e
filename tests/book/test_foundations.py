"""The checks that chapters 1-6 make, read back from the executed notebooks."""
import re

import pytest

from book_outputs import executed, glued


def test_ch2_relative_attention_matches_the_loops():
    values = glued("02_self_attention")
    assert 0 <= values["rel_max_error"] < 1e-10
    assert 0 <= values["sa_plain_max_error"] < 1e-10
    assert 0 <= values["sa_sdpa_max_error"] < 1e-10
    # the fused form the model trains with: q~, k~ and q~ k~^T equal the loops and Eq. 2
    assert 0 <= values["fused_max_error"] < 1e-10
    # the attention weights shown are the module's own (float32)
    assert 0 <= values["weights_reproduce_error"] < 1e-4


def test_ch3_channel_and_hybrid_attention():
    values = glued("03_hybrid_attention")
    assert 0 <= values["ca_max_error"] < 1e-10
    assert 0 <= values["ha_max_error"] < 1e-10
    assert 0 <= values["ha_is_weighted_sum_error"] < 1e-5
    # all heads in one call (what RMHHA runs) equal each head by the loops on its slice
    assert 0 <= values["fused_heads_max_error"] < 1e-10
    # the argument for max pooling: it ranks the small local channel first, averaging does not
    assert values["max_local"] > values["max_broad"]
    assert values["average_local"] < values["average_broad"]
    assert 0 < values["local_area"] < 0.2


def test_ch4_rmhha_slices_ranking_and_scale_gradients():
    values = glued("04_rmhha")
    assert 0 <= values["slice_loop_error"] < 1e-10
    # a head sees only its own slice
    assert values["touched_head_change"] > 1e-3
    assert values["other_heads_change"] < 1e-12
    # a = (0.6, 1.4, -1.8, 1.1, 1.4): ties keep head order; |a| puts the negative head first
    assert values["order_value"] == (2, 5, 4, 1, 3)
    assert values["order_abs"] == (3, 2, 5, 4, 1)
    # a_k learns from the age loss only
    assert values["scale_grad_age"] > 0
    assert values["scale_grad_diversity"] == 0.0


def test_ch5_diversity_loss_and_the_fig10_experiment():
    values = glued("05_diversity_loss")
    assert 0 <= values["div_loop_error"] < 1e-10
    assert 0 <= values["div_grad_error"] < 1e-10
    # raw maps escape the loss by shrinking or flipping; normalised maps do not
    assert abs(values["raw_scaled_ratio"] - 0.01) < 1e-9
    assert values["raw_flipped"] < 0
    assert values["normalized_scaled_change"] < 1e-12
    # descending L_div pulls two overlapping heads apart, also on faces it never saw
    assert values["overlap_before_train"] > 0.5
    assert values["overlap_after_train"] < 0.25 * values["overlap_before_train"]
    assert values["overlap_after_test"] < values["overlap_before_test"]
    assert values["div_after_train"] < values["div_before_train"]


def test_ch6_age_loss_and_eq9():
    values = glued("06_age_loss")
    assert values["q"] == values["age_max"] - values["age_min"] + 1
    # Eq. 9 after a softmax changes nothing; on raw outputs it kills classes
    assert values["eq9_noop_error"] < 1e-12
    assert values["dead_as_written"] == 0.0
    assert 0.2 < values["dead_raw"] < 0.8
    assert values["raw_zero_share"] == values["dead_raw"]
    assert values["all_negative_is_uniform"] < 1e-12
    assert values["loss_max_error"] < 1e-10
    # MAE is blind to the width, KL is not
    assert values["mae_0"] < 1e-6 and abs(values["kl_0"]) < 1e-6
    assert values["mae_1"] < 0.1 and values["kl_1"] > 0.5
    assert abs(values["mae_2"] - 5.0) < 1e-6 and values["kl_2"] > values["kl_1"]


def test_ch1_metrics_protocols_and_alignment():
    values = glued("01_task")
    assert values["cs_loop_error"] == 0.0
    # the constant estimator is a weak baseline on the drawn faces (ages 10-80)
    assert 10 < values["constant_mae"] < 30 and 0 < values["constant_cs5"] < 0.5
    # subject-exclusive protocols: nobody on both sides; one fold per person
    assert values["shared_subjects"] == 0
    assert values["n_lopo"] == values["n_subjects"] > 1
    # dlib finds the astronaut and the similarity transform lands the eyes on their targets
    assert values["n_detected"] == 1
    assert values["eye_landing_error"] < 1e-6
    assert abs(values["rotation_deg"]) < 20 and 0.3 < values["scale"] < 3


FOUNDATIONS = ["01_task", "02_self_attention", "03_hybrid_attention", "04_rmhha", "05_diversity_loss",
               "06_age_loss"]


@pytest.mark.parametrize("stem", FOUNDATIONS)
def test_ch1_to_6_are_lessons_with_captioned_figures(stem):
    """A label on the title, a Summary and 3-5 Exercises at the end, a caption on every figure, and
    chapters referred to by label, never by a typed number."""
    nb = executed(stem)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(rf"^\(ch-{stem.split('_', 1)[1].replace('_', '-')}\)=\n# ", text, re.M)
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[-2:] == ["Summary", "Exercises"]
    exercises = text.split("## Exercises", 1)[1]
    assert 3 <= len(re.findall(r"^\d+\. ", exercises, re.M)) <= 5
    assert not re.search(r"\b[Cc]hapters? \d", text), "a chapter number typed by hand"
    for cell in nb.cells:
        figures = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if figures:
            caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption", "")
            assert caption.strip(), f"a figure without a caption in cell:\n{cell.source[:200]}"
