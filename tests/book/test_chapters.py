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
