"""What every chapter's page holds before it is executed: parameters that papermill reads,
code that fits the page, values recorded with one helper, and no buttons that lead nowhere.

These read the chapters' sources (book/NN_*.md); tests/book reads the executed chapters.
"""
import ast
import importlib.util
import logging
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book_build", REPO / "book" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

CHAPTERS = build.chapters()
#: The width of the page's code column (at 1280 px) in characters, as the ruff line length
#: of black and of the book's code cells.
CODE_WIDTH = 88


def test_the_book_has_its_chapters():
    assert [p.stem[:2] for p in CHAPTERS] == [f"{n:02d}" for n in range(1, 13)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_finds_every_parameter_with_its_type_and_help(path, tmp_path, caplog):
    """`papermill --help-notebook` lists what the build may set: papermill reads a parameters
    cell line by line and skips a line with more than one ``=`` (``a = b = None``)."""
    notebook = tmp_path / f"{path.stem}.ipynb"
    nbformat.write(jupytext.read(path), notebook)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = papermill.inspect_notebook(str(notebook))
    assert not [r.message for r in caplog.records if "Unable to parse" in r.message]
    declared = build.declared_parameters(jupytext.read(path))
    assert declared, f"{path.name} has no parameters cell"
    assert set(found) == set(declared)
    for name, parameter in found.items():
        assert parameter["inferred_type_name"] not in ("", "None"), (path.name, name)
        assert parameter["help"], (path.name, name)
        assert ast.literal_eval(parameter["default"]) == declared[name], (path.name, name)


def test_the_build_flags_set_parameters_of_one_type_in_every_chapter(tmp_path):
    """``--profile``, ``--device`` and ``--seed`` set the same names, of one type, everywhere."""
    types: dict[str, set] = {}
    for path in CHAPTERS:
        notebook = tmp_path / f"{path.stem}.ipynb"
        nbformat.write(jupytext.read(path), notebook)
        for name, parameter in papermill.inspect_notebook(str(notebook)).items():
            types.setdefault(name, set()).add(parameter["inferred_type_name"])
    assert types["profile"] == {"str"} and types["device"] == {"str"}
    assert types["seed"] == {"int"}


def code_lines(path: Path):
    for cell in jupytext.read(path).cells:
        if cell.cell_type == "code":
            yield from cell.source.splitlines()


def shown_blocks(path: Path):
    """The lines of the code blocks a page shows without running them (```bash, ```python)."""
    import re

    for block in re.findall(r"^```(?:bash|python|text|console)\n(.*?)^```$", path.read_text(),
                            flags=re.S | re.M):
        yield from block.splitlines()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_fits_the_code_column(path):
    wide = [line for line in code_lines(path) if len(line) > CODE_WIDTH]
    wide += [line for line in shown_blocks(path) if len(line) > CODE_WIDTH]
    assert wide == []


def test_printed_commands_fit_the_code_column():
    import shlex

    from adpf.book import command_lines

    command = ("adpf experiments heads --preset paper --recipe long --data data/morph2-128 "
               "--test 0.2 --val 0 --heads-list 1,2,3,4,5,6,7,8 --seeds 0 1 2 --out runs/heads")
    lines = command_lines(command).splitlines()
    assert len(lines) > 1 and all(len(line) <= CODE_WIDTH for line in lines)
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert all(line.startswith("    --") for line in lines[1:])
    # the shell reads the lines as the one command, every option with its values
    assert shlex.split(command_lines(command).replace("\\\n", "")) == shlex.split(command)
    assert "--seeds 0 1 2" in command_lines(command)
    assert command_lines("adpf train --preset cpu") == "adpf train --preset cpu"


def theme_options(config: dict) -> dict:
    """The theme options Jupyter Book makes of a staged ``_config.yml`` (its schema checked)."""
    from jupyter_book.config import get_final_config

    sphinx, _ = get_final_config(user_yaml=config, sourcedir=REPO, raise_on_invalid=True,
                                 cli_config={"latex_individualpages": False})
    return sphinx["html_theme_options"]


def shown_buttons(options: dict) -> dict:
    launch = options.get("launch_buttons", {})
    buttons = {key: launch[key] for key in ("binderhub_url", "jupyterhub_url", "colab_url",
                                           "deepnote_url") if launch.get(key)}
    if launch.get("thebe"):
        buttons["thebe"] = True
    buttons.update({key: True for key in ("use_repository_button", "use_edit_page_button",
                                          "use_issues_button") if options.get(key)})
    return buttons


def test_no_button_leads_to_a_repository_that_does_not_exist():
    """While ``repository.url`` names no repository, the pages have no launch, repository,
    edit or issues button: each would point at it."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert not build.is_repository(config["repository"]["url"])
    assert shown_buttons(theme_options(build.book_config(config))) == {}
    # nor when the book is built without build.py
    assert shown_buttons(theme_options(config)) == {}
    assert "OWNER" not in (REPO / "_config.yml").read_text().replace("<owner>", "")


@pytest.mark.parametrize("url", ["", "https://github.com/OWNER/adpf", "adpf", "https://github.com/adpf"])
def test_a_placeholder_url_gives_no_button(url):
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["repository"]["url"] = url
    assert shown_buttons(theme_options(build.book_config(config))) == {}


def test_the_repository_url_is_the_one_setting_of_the_buttons():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["repository"]["url"] = "https://github.com/someone/adpf"
    options = theme_options(build.book_config(config))
    assert shown_buttons(options) == {"binderhub_url": "https://mybinder.org",
                                      "use_repository_button": True}
    assert options["repository_url"] == "https://github.com/someone/adpf"


def test_record_glues_every_value_as_a_number_the_page_can_format(monkeypatch):
    import numpy as np
    import torch
    from myst_nb.ext import glue as glue_module

    from adpf.book import record

    shown = []
    monkeypatch.setattr(glue_module, "ipy_display",
                        lambda bundle, raw, metadata: shown.append((bundle, metadata)))
    record(n_train=np.int64(2100), share=torch.tensor(0.25), mae=np.float64(3.5),
           heads=(np.int64(1), 3), device="cpu")
    names = [meta["scrapbook"]["name"] for _, meta in shown]
    assert names == ["n_train", "share", "mae", "heads", "device"]
    texts = [bundle["application/papermill.record/text/plain"] for bundle, _ in shown]
    assert texts == ["2100", "0.25", "3.5", "(1, 3)", "'cpu'"]
    # {glue:text}`n_train:,` formats what literal_eval reads from the text
    assert [format(ast.literal_eval(t), ",") for t in texts[:1]] == ["2,100"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_quotes_counts_with_thousands_separators(path):
    """A count (``n_...``) quoted in the text reads 3,000, not 3000 (``{glue:text}`n_faces:,```)."""
    import re

    bare = re.findall(r"\{glue:text\}`(n_\w+)`", path.read_text())
    assert bare == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_quotes_no_cache_key(path):
    """A cache key is a hash that means nothing to a reader: the prose does not quote one."""
    import re

    recorded_keys = {k for k in re.findall(r"\b(\w+_key)=", path.read_text())}
    quoted = re.findall(r"\{glue(?::\w+)?\}`(\w+)", path.read_text())
    assert recorded_keys & set(quoted) == set()


def test_output_tables_have_padding_between_their_columns(tmp_path, monkeypatch):
    """The staged book loads _static/adpf.css, which pads the cells of printed tables."""
    import re

    from jupyter_book.config import get_final_config

    monkeypatch.setattr(build, "STAGE", tmp_path)
    build.stage_tree([])
    css = (tmp_path / "_static" / "adpf.css").read_text()
    rule = re.search(r"div\.cell_output table td\s*\{([^}]*)\}", css)
    assert rule and re.search(r"padding:\s*[\d.]+em\s+[1-9\d.]*[.\d]+em", rule.group(1))
    sphinx, _ = get_final_config(user_yaml=tmp_path / "_config.yml", sourcedir=tmp_path,
                                 cli_config={"latex_individualpages": False})
    assert "adpf.css" in sphinx["html_css_files"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_chapter_rebinds_the_record_helper(path):
    """``record`` is adpf.book.record in every cell: a chapter that names a value ``record``
    breaks every later call (seen: chapter 11's benchmark records)."""
    bound = []
    for cell in jupytext.read(path).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Name) and node.id == "record" and isinstance(node.ctx, ast.Store):
                bound.append(node.lineno)
    assert bound == []


def test_spoken_list_says_a_record_s_items_as_the_text_would():
    import numpy as np

    from adpf.book import spoken_list

    assert spoken_list(np.array([1, 3, 5])) == "1, 3 and 5"  # NumPy integers, as a record's column gives them
    assert spoken_list([4, 8]) == "4 and 8"
    assert spoken_list([np.int64(2100)]) == "2,100"
    assert spoken_list([]) == ""


def markdown_of(path: Path) -> str:
    """The prose of a chapter: its markdown cells, without the code."""
    return "\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "markdown")


def test_a_recommended_paper_recipe_carries_its_warning():
    """Open choice 9: the `paper` recipe (lr 0.1, no clipping) diverged to NaN on the drawn
    faces. Every chapter that recommends it says so in a warning and points to `--recipe gpu`."""
    import re

    recommending = [p for p in CHAPTERS if "--recipe paper" in p.read_text()]
    assert {p.stem[:2] for p in recommending} >= {"10", "11"}
    for path in recommending:
        warnings = re.findall(r"^```\{warning\}\n(.*?)^```$", markdown_of(path), flags=re.S | re.M)
        assert any("NaN" in w and "<choice-9>`" in w and "--recipe gpu" in w for w in warnings), path.name


def test_chapter_10_says_the_head_counts_and_the_one_seed_claims_from_its_records():
    """The head counts are the record's (1, 3 and 5 once, while the text said "1 to 8"), and the
    sentence on claims with one seed is recorded by the code cell, empty when there are none."""
    prose = markdown_of(REPO / "book" / "10_ablations.md")
    assert "eight head counts" not in prose and "1 to 8 heads" not in prose
    assert prose.count("{glue:text}`head_counts`") == 2
    assert "{glue:text}`one_seed_note`" in prose and "n_one_seed" not in prose


def test_chapter_10_reads_one_budget_and_cites_the_real_faces():
    """curves-synthetic was retired (every record row carries its curves): chapter 10 draws the
    ablation record's own curves, and its real-faces section cites both datasets it names."""
    source = (REPO / "book" / "10_ablations.md").read_text()
    assert "curves-synthetic" not in source and "long_" not in source
    assert "plot_stage_curves(curves, order" in source and "learning_curves(synthetic)" in source
    assert "the shared faces" not in source.replace("\n", " ")
    bib = (REPO / "book" / "references.bib").read_text()
    for key in ("zhang2017utkface", "cheng2019aaf"):
        assert f"{{cite}}`{key}`" in source and f"{{{key}," in bib
