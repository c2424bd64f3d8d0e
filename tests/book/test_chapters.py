"""Every chapter of the toc was executed, from its present source, without an error."""
import pytest

from book_outputs import chapter_stems, executed, source_sha256


@pytest.mark.parametrize("stem", chapter_stems())
def test_chapter_executed_from_present_source(stem):
    nb = executed(stem)
    assert nb.metadata["adpf_build"]["source_sha256"] == source_sha256(stem), (
        f"{stem}.ipynb was executed from an older book/{stem}.md: run `make book`")
    assert nb.metadata["papermill"]["exception"] is None
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.parametrize("stem", chapter_stems())
def test_page_has_no_button_to_a_repository_that_does_not_exist(stem):
    """The built page links to no Binder, Colab or repository while ``_config.yml`` names none
    (book/build.py's ``book_config``)."""
    from book_outputs import REPO

    page = REPO / "_build" / "book-src" / "_build" / "html" / "book" / f"{stem}.html"
    if not page.exists():
        pytest.fail(f"{page} does not exist: run `make book` first")
    html = page.read_text()
    for dead in ("github.com/OWNER", "mybinder.org", "colab.research.google.com"):
        assert dead not in html, dead
