"""The config object: presets, heads sweep, validation, serialisation, fingerprint."""
import dataclasses
import json

import pytest

from adpf.config import PRESETS, ADPFConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_consistent(name):
    c = get_preset(name)
    assert c.c_head * c.heads == c.x_channels
    assert c.image_size == c.x_size * 2 ** (len(c.stem_channels) - 1)
    assert len(c.fusion_channels) == c.heads
    assert c.num_classes == c.age_max - c.age_min + 1


def test_paper_preset_follows_the_paper():
    c = get_preset("paper")
    assert (c.image_size, c.x_size, c.x_channels, c.heads, c.c_head) == (128, 32, 500, 5, 100)
    assert (c.diversity_weight, c.age_min, c.age_max) == (0.01, 0, 100)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("heads", range(1, 9))
def test_heads_sweep_gives_valid_configs(name, heads):
    base = get_preset(name)
    c = get_preset(name, heads=heads)
    assert c.heads == heads and c.c_head == base.c_head
    assert len(c.fusion_channels) == heads
    assert set(c.fusion_channels) <= set(base.fusion_channels)


@pytest.mark.parametrize("changes,message", [
    (dict(x_channels=501), "divisible by heads"),
    (dict(age_min=50, age_max=50), "must exceed"),
    (dict(fusion_channels=(8, 8)), "one main-stream stage per patch"),
    (dict(patch_min_frac=0.7, patch_max_frac=0.6), "patch_min_frac"),
    (dict(x_size=16), "image_size=128 must equal"),
    (dict(patch_threshold=2.0), "patch_threshold"),
    (dict(variant="resnet"), "variant must be one of"),
    (dict(attention="cross"), "attention must be one of"),
    (dict(rank_by="sign"), "rank_by"),
    (dict(eq9="clip"), "eq9"),
    (dict(diversity_maps="softmax"), "diversity_maps"),
    (dict(attention_impl="flash"), "attention_impl"),
])
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        get_preset("paper", **changes)


def test_unknown_preset_and_field():
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("gpu")
    with pytest.raises(ValueError, match="unknown ADPFConfig field"):
        ADPFConfig.from_dict({**ADPFConfig().to_dict(), "dropout": 0.5})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    c = get_preset(name, patch_threshold=0.4)
    again = ADPFConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.fingerprint() == c.fingerprint()


def other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value + value[-1:]
    return value + "x"


def test_fingerprint_changes_when_any_field_changes():
    base = ADPFConfig()
    seen = {base.fingerprint()}
    for f in dataclasses.fields(ADPFConfig):
        d = base.to_dict()
        d[f.name] = other_value(getattr(base, f.name))
        # bypass validation: the fingerprint must tell apart even configs that differ in one field only
        c = object.__new__(ADPFConfig)
        for k, v in d.items():
            object.__setattr__(c, k, v)
        fp = c.fingerprint()
        assert fp not in seen, f.name
        seen.add(fp)
    assert len(seen) == len(dataclasses.fields(ADPFConfig)) + 1
