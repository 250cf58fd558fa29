"""MkDocs hook: tables generated from the code, so the docs cannot drift from it.

`<!-- edgeae:exit-codes -->` in a page becomes the exit-code table, read from
edgeae.contract.errors.EXIT_CODES (the one place the codes are defined).
"""
from __future__ import annotations

EXIT_CODES_MARKER = "<!-- edgeae:exit-codes -->"


def _cell(text: str) -> str:
    """A table cell: a pipe outside `code` is escaped (Python-Markdown keeps those inside code spans)."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def exit_codes_table() -> str:
    from edgeae.contract.errors import EXIT_CODES

    rows = ["| code | meaning |", "|---|---|"]
    for code, meaning in sorted(EXIT_CODES.items()):
        rows.append(f"| {code} | {_cell(meaning)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: object) -> str:
    if EXIT_CODES_MARKER in markdown:
        markdown = markdown.replace(EXIT_CODES_MARKER, exit_codes_table())
    return markdown
