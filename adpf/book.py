"""What a chapter of the book does besides teaching: record the values its prose quotes.

A chapter computes a number in a code cell and quotes it in the text (``{glue:text}`name```,
with a format: ``{glue:text}`n_faces:,``` prints 3,000); ``tests/book`` reads the same values
back from the executed notebook. One call records them all, so the cell reads as the lesson::

    record(n_train=len(split.train), chance=chance, share_end=share[-1].mean())
"""
from __future__ import annotations


def plain(value):
    """``value`` as the Python object the page and the checks can read back.

    A glued value is stored as its ``repr``: a 0-d tensor or a NumPy scalar would be stored as
    ``tensor(0.5)`` or ``np.float64(0.5)``, which ``{glue:text}`` cannot format; they become
    Python numbers (inside tuples and lists too). Anything else is left as it is.
    """
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def record(**values) -> None:
    """Record each value under its name for the chapter's text and its checks (``myst_nb.glue``,
    not displayed: the page shows the value where the text quotes it)."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, plain(value), display=False)


def spoken_list(items) -> str:
    """``items`` as the text says them: "5", "1 and 3", "1, 3 and 5" (numbers with thousands
    separators); for a sentence whose list comes from a record, not from the author."""
    words = [f"{x:,}" if isinstance(x, int) else str(x) for x in (plain(x) for x in items)]
    if len(words) < 2:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def command_lines(command: str, width: int = 88) -> str:
    """A shell command broken into lines of at most ``width`` characters where it is longer:
    at the spaces before its options (``--name value`` stays together), each line but the last
    ending in `` \\`` and the next indented by four spaces, so the lines paste as one command.
    A single option longer than the width keeps its line."""
    groups: list[str] = []
    for word in command.split():
        if word.startswith("-") or not groups:
            groups.append(word)
        else:
            groups[-1] += " " + word
    lines = [groups[0]]
    for group in groups[1:]:
        if len(lines[-1]) + 1 + len(group) + 2 <= width:
            lines[-1] += " " + group
        else:
            lines.append("    " + group)
    return " \\\n".join(lines)
