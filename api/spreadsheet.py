"""Cells for every CSV the API produces, made safe to open in a spreadsheet.

A cell that a spreadsheet would read as a formula (CSV injection, OWASP "CSV Injection") is
exported as text by a leading ``'``. The triggers are ``= + - @``, and TAB and CR, which
Excel and LibreOffice strip before looking for one; a trigger after leading whitespace
counts too, and so do the full-width forms that East Asian locales accept. The text of such a
cell is kept whole after the quote, so nothing a camera or an admin wrote is lost.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["FORMULA_TRIGGERS", "csv_cell"]

#: The first characters that make a spreadsheet evaluate a cell.
FORMULA_TRIGGERS = frozenset("=+-@\t\r＝＋－＠")
# Skipped before a trigger is looked for: a spreadsheet trims these when it parses a cell.
_LEADING_BLANKS = " \t\r\n\x0b\x0c\u00a0\u3000"


def csv_cell(value: object) -> str:
    """``value`` as one CSV cell: empty for None, RFC 3339 UTC for a time, ``true``/``false``
    for a bool, a number as written (a negative number is data, not a formula), and any other
    text quoted with ``'`` when it would start a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    text = str(value)
    if text[:1] in FORMULA_TRIGGERS or text.lstrip(_LEADING_BLANKS)[:1] in FORMULA_TRIGGERS:
        return "'" + text
    return text
