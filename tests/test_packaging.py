"""environment.yml's pip list and pyproject.toml's dependencies name exactly the same specs."""
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_specs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return specs


def environment_specs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml must have one pip: section"
    return [s for s in pip[0] if not s.startswith("-e")]  # the editable install of adpf itself


def normalise(spec):
    return spec.replace(" ", "").lower()


def test_same_dependency_specs():
    py, env = pyproject_specs(), environment_specs()
    assert len(py) == len(set(map(normalise, py))), "a dependency is listed twice in pyproject.toml"
    assert sorted(map(normalise, env)) == sorted(map(normalise, py))


def test_environment_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(s.startswith("-e") for s in pip)


def test_readme_parameter_counts_are_the_models():
    """The README's table of parameter counts is what `adpf info` counts today."""
    import re

    from adpf.config import get_preset
    from adpf.networks import build_model, count_parameters

    def n(text):
        return int(text.replace(",", ""))

    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| `(\w+)` \| [^|]+\| \**([\d,]+)\** \(([\d,]+) \+ ([\d,]+)\) \| ([\d,]+) \| ([\d,]+) \(w = (\d+)\) \|$",
        (ROOT / "README.md").read_text(), flags=re.M)}
    assert set(rows) == {"paper", "cpu"}
    for preset, (total, attention, fusion, plain, reference, width) in rows.items():
        config = get_preset(preset)
        adpf_model = build_model(config)
        assert n(total) == count_parameters(adpf_model), preset
        assert n(attention) == count_parameters(adpf_model.attention_net), preset
        assert n(fusion) == count_parameters(adpf_model.fusion_net), preset
        assert n(plain) == count_parameters(build_model(config.replace(variant="plain_cnn"))), preset
        assert int(width) == config.reference_width, preset
        assert n(reference) == count_parameters(build_model(config.replace(variant="resnet18"))), preset
