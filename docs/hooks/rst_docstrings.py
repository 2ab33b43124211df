"""A griffe extension for the API reference: xpgrad's docstrings use a little reStructuredText, shown as Markdown.

* roles (``:class:`Module```, ``:func:`~xpgrad.nn.flatten_parameters```) become code spans;
* simple tables (columns under ``====  ====`` rules) become Markdown tables;
* an attribute without a docstring takes its ``#:`` comment, as Sphinx's autodoc reads it (the
  comment lines just above it, or one after it on the same line).

Only the rendering changes; the docstrings in the source stay as they are (``help()`` reads them too).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):`[~.]*([^`]+)`")
RULE = re.compile(r"^( *)=+( +=+)+ *$")


def markdown(text: str) -> str:
    """``text`` with its roles as code spans and its simple tables as Markdown tables."""
    lines = ROLE.sub(r"`\1`", text).split("\n")
    out, i = [], 0
    while i < len(lines):
        if RULE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if RULE.match(lines[j]) and j > i + 2
                        and (j + 1 == len(lines) or not lines[j + 1].strip())), None)
            if end is not None:
                out += _table(lines[i], [line for line in lines[i + 1:end] if not RULE.match(line)])
                i = end + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _table(rule: str, rows: list[str]) -> list[str]:
    starts = [m.start() for m in re.finditer(r"=+", rule)]
    bounds = list(zip(starts, starts[1:] + [None]))
    cells = [[row[a:b].strip() for a, b in bounds] for row in rows]
    table = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(starts)]
    return ["", *table, *("| " + " | ".join(c) + " |" for c in cells[1:]), ""]


def doc_comment(lines: list[str], lineno: int) -> str:
    """The ``#:`` comment of the statement on line ``lineno`` (1-based) of ``lines``, or ""."""
    _, mark, after = lines[lineno - 1].partition("#:")
    if mark:
        return after.strip()
    above = []
    for line in reversed(lines[:lineno - 1]):
        if not line.strip().startswith("#:"):
            break
        above.insert(0, line.strip()[2:].strip())
    return " ".join(above)


class RestructuredTextAsMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded package, once the tree is built."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.is_attribute and obj.docstring is None and obj.lineno:
            comment = doc_comment(obj.lines_collection[obj.filepath], obj.lineno)
            if comment:
                obj.docstring = griffe.Docstring(comment, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
