"""book/build.py's plan: every shared model is trained once, before the chapters that load it,
in the setting those chapters declare; and its time table."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book_build", REPO / "book" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{{code-cell}} ipython3
:tags: [parameters]
{parameters}
```
"""


def chapter(folder: Path, stem: str, parameters: str) -> Path:
    path = folder / f"{stem}.md"
    path.write_text(HEADER.format(parameters=parameters))
    return path


def test_parameters_of_every_assignment_form(tmp_path):
    path = chapter(tmp_path, "07_training_attention",
                   'profile = "cpu"  # a comment\nn_faces = epochs = None\ndevice, seed = "auto", 3\nrows = list()')
    declared = build.declared_parameters(build.jupytext.read(path))
    assert declared == {"profile": "cpu", "n_faces": None, "epochs": None, "device": "auto", "seed": 3, "rows": None}
    assert build.chapter_setting(path, {"device": "cuda"}) == {"profile": "cpu", "n_faces": None, "epochs": None,
                                                               "device": "cuda", "seed": 3}


def test_each_model_is_trained_once_per_setting_and_adpf_after_its_attention_net(tmp_path):
    same = 'profile = "cpu"\nn_faces = epochs = None\ndevice, seed = "auto", 0'
    paths = [chapter(tmp_path, "07_training_attention", same), chapter(tmp_path, "08_patches_fusion", same),
             chapter(tmp_path, "09_training_adpf", same),
             chapter(tmp_path, "12_explorer", same.replace("seed = \"auto\", 0", "seed = \"auto\", 1")),
             chapter(tmp_path, "02_self_attention", 'profile = "cpu"')]
    trainings, waits = build.plan(paths, {})
    variants = sorted((variant, setting["seed"]) for variant, setting, _ in trainings.values())
    # seed 0: AttentionNet, ADPF, plain CNN for chapters 7-9; seed 1: ADPF and its AttentionNet for chapter 12
    assert variants == [("adpf", 0), ("adpf", 1), ("attention_only", 0), ("attention_only", 1), ("plain_cnn", 0)]
    assert waits["07_training_attention"] == waits["08_patches_fusion"]
    assert len(set(waits["09_training_adpf"])) == 3 and waits["02_self_attention"] == ()
    for variant, setting, after in trainings.values():
        expected = [("attention_only", setting["seed"])] if variant == "adpf" else []
        assert [(trainings[a][0], trainings[a][1]["seed"]) for a in after] == expected
    # the build's overrides reach the trainings
    trainings, _ = build.plan(paths[:1], {"device": "cuda", "seed": 2})
    assert [s for _, s, _ in trainings.values()] == [{"profile": "cpu", "n_faces": None, "epochs": None,
                                                      "device": "cuda", "seed": 2}]


def test_every_chapter_that_loads_a_model_exists_and_declares_its_setting():
    stems = {p.stem: p for p in build.chapters()}
    for stem in build.NEEDS:
        assert stem in stems, stem
        assert set(build.chapter_setting(stems[stem], {})) == set(build.SETTING_PARAMETERS), stem


def test_the_time_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "TIMES", tmp_path / "book-times.json")
    rows = [{"step": "01_task", "kind": "chapter", "seconds": 12.5, "status": "ok"},
            {"step": "HTML (jupyter-book)", "kind": "html", "seconds": 30.0, "status": "ok"}]
    build.write_times(rows, 50.0, 2, 1, (1.0, 0.5, 0.25), (2.0, 1.0, 0.5))
    times = json.loads((tmp_path / "book-times.json").read_text())
    assert times["steps"] == rows and times["total_seconds"] == 50.0 and times["workers"] == 2
    assert times["load_average_start"] == [1.0, 0.5, 0.25] and times["load_average_end"][0] == 2.0
    out = capsys.readouterr().out
    assert "01_task" in out and "12.5" in out and "0.8 min wall" in out


def test_workers_must_be_positive():
    with pytest.raises(SystemExit):
        build.main(["--workers", "0"])


def recorded_keys(path: Path) -> list[str]:
    """The names a chapter records (``record(name=...)``, ``glue("name", ...)``), f-string
    names aside."""
    import ast

    keys = []
    for cell in build.jupytext.read(path).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id == "record":
                keys += [k.arg for k in node.keywords if k.arg]
            elif node.func.id == "glue" and isinstance(node.args[0], ast.Constant):
                keys.append(node.args[0].value)
    return keys


def test_every_glued_value_is_read_by_the_text_or_a_book_check():
    """A chapter records only what its prose shows or tests/book checks (f-string keys aside)."""
    import re

    checks = "".join(p.read_text() for p in (REPO / "tests" / "book").glob("*.py"))
    unread = []
    chapters = sorted((REPO / "book").glob("[0-9]*.md"))
    assert sum(len(recorded_keys(c)) for c in chapters) > 100
    for chapter in chapters:
        text = chapter.read_text()
        for key in recorded_keys(chapter):
            in_text = re.search(r"\{glue(?::\w+)?\}`" + re.escape(key) + r"[`:]", text) or \
                re.search(r"```\{glue:\w+\}\s+" + re.escape(key) + r"\s", text)
            if not in_text and not re.search(r"[\"']" + re.escape(key) + r"[\"']", checks):
                unread.append(f"{chapter.name}: {key}")
    assert not unread


def test_annotated_parameters_are_read_and_set_by_the_build(tmp_path, monkeypatch, caplog):
    """The chapters' form (one annotated assignment a line): build.py reads it, and a value of
    ``--param`` / ``--profile`` reaches the chapter through papermill, which knows the name."""
    import logging

    import nbformat

    params = ('from typing import Optional\n\nprofile: str = "cpu"  # the setting\n'
              "n_faces: Optional[int] = None  # drawn faces\nseed: int = 0  # the seed")
    path = chapter(tmp_path, "07_training_attention", params)
    with path.open("a") as f:
        f.write('\n```{code-cell} ipython3\nprint(profile, n_faces, seed)\n```\n')
    assert build.declared_parameters(build.jupytext.read(path)) == {"profile": "cpu", "n_faces": None, "seed": 0}
    assert build.chapter_setting(path, {"profile": "paper"}) == {"profile": "paper", "n_faces": None, "seed": 0}
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "STAGE", tmp_path / "stage")
    (tmp_path / "stage" / "book").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        build.execute(path, {"profile": "paper", "n_faces": 1000, "rerun": True})
    assert not [r.message for r in caplog.records if "parameter" in r.message]
    cells = nbformat.read(build.staged(path), as_version=4).cells
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "rerun" not in injected[0].source
    assert cells[-1].outputs[0]["text"] == "paper 1000 0\n"
