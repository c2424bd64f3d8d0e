"""The checks that chapters 1-6 make, read back from the executed notebooks."""
from book_outputs import glued


def test_ch2_relative_attention_matches_the_loops():
    values = glued("02_self_attention")
    assert 0 <= values["rel_max_error"] < 1e-10
    assert 0 <= values["sa_plain_max_error"] < 1e-10
    assert 0 <= values["sa_sdpa_max_error"] < 1e-10
    # the attention weights shown are the module's own (float32)
    assert 0 <= values["weights_reproduce_error"] < 1e-4


def test_ch3_channel_and_hybrid_attention():
    values = glued("03_hybrid_attention")
    assert 0 <= values["ca_max_error"] < 1e-10
    assert 0 <= values["ha_max_error"] < 1e-10
    assert 0 <= values["ha_is_weighted_sum_error"] < 1e-5
    # the argument for max pooling: it ranks the small local channel first, averaging does not
    assert values["max_local"] > values["max_broad"]
    assert values["average_local"] < values["average_broad"]
    assert 0 < values["local_area"] < 0.2
