"""MkDocs hook: parts of pages made at build time from the code, so that they cannot go stale.

* ``<!-- xpgrad train options -->`` (and ``eval``, ``info``): a table of the command's options, read from
  its argparse parser (:func:`xpgrad.cli.build_parser`);
* ``<!-- xpgrad.__all__ -->``: the reference page of ``xpgrad`` itself. ``xpgrad`` loads its names on first use (a module ``__getattr__``), which a reader of the source such as
griffe cannot follow; so the page's ``<!-- xpgrad.__all__ -->`` becomes one ``:::`` block per name, at
its home (``xpgrad.tensor.Tensor`` for ``xpgrad.Tensor``), and a link per subpackage that has a page of
its own. A name added to ``xpgrad.__all__`` appears without an edit here.
"""

from __future__ import annotations

import argparse
import html
import re

import xpgrad
from xpgrad.cli import build_parser

PLACEHOLDER = "<!-- xpgrad.__all__ -->"
OPTIONS = re.compile(r"<!-- xpgrad (\w+) options -->")
OWN_PAGES = {"nn": "nn.md", "functional": "functional.md", "optim": "optim.md"}


def names_markdown() -> str:
    """The Markdown (mkdocstrings blocks and links) that stands for ``xpgrad.__all__``."""
    blocks = []
    for name in xpgrad.__all__:
        if name in OWN_PAGES:
            blocks.append(f"## `xpgrad.{name}`\n\nThe module `xpgrad.{name}`: see [its page]({OWN_PAGES[name]}).\n")
            continue
        home = f"xpgrad.{xpgrad._NAMES[name]}.{name}" if name in xpgrad._NAMES else f"xpgrad.{name}"
        blocks.append(f"::: {home}\n    options:\n      heading_level: 2\n      show_root_full_path: false\n")
    return "\n".join(blocks)


def options_table(command: str) -> str:
    """A Markdown table of ``xpgrad COMMAND``'s options: what each takes, its default, and its help."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = ["| option | takes | default | what it does |", "|---|---|---|---|"]
    for action in sub.choices[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        takes = ("" if action.nargs == 0 else "`" + "`, `".join(map(str, action.choices)) + "`" if action.choices
                 else f"`{action.metavar or action.dest.upper()}`")
        default = ("required" if action.required else "the recipe's" if action.default is None and command == "train"
                   and action.dest in RECIPE_FIELDS else "" if action.default in (None, False) else f"`{action.default}`")
        text = html.escape(action.help or "").replace("|", "\\|")
        rows.append(f"| `{', '.join(action.option_strings)}` | {takes} | {default} | {text} |")
    return "\n".join(rows)


RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "dtype", "hidden", "dataset", "seed", "model", "recipe")


def on_page_markdown(markdown, page, **kwargs):
    markdown = OPTIONS.sub(lambda m: options_table(m.group(1)), markdown)
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, names_markdown())
    return markdown
