"""MkDocs hook: the reference page of ``xpgrad`` itself lists ``xpgrad.__all__``, read at build time.

``xpgrad`` loads its names on first use (a module ``__getattr__``), which a reader of the source such as
griffe cannot follow; so the page's ``<!-- xpgrad.__all__ -->`` becomes one ``:::`` block per name, at
its home (``xpgrad.tensor.Tensor`` for ``xpgrad.Tensor``), and a link per subpackage that has a page of
its own. A name added to ``xpgrad.__all__`` appears without an edit here.
"""

from __future__ import annotations

import xpgrad

PLACEHOLDER = "<!-- xpgrad.__all__ -->"
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


def on_page_markdown(markdown, page, **kwargs):
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, names_markdown())
    return markdown
