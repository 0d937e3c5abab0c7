"""api/spreadsheet.py: which CSV cells are quoted as text, from samples of CSV injection."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from api.spreadsheet import csv_cell

ATTACKS = ["=1+1", "+1", "-1+2", "@SUM(A1)", "\t=HYPERLINK(\"http://x\")", "\r=cmd|' /C calc'!A0", "\t",
           " =1", "  \t+1", "\n@A1", "\u00a0=1", "＝1+1", "＠A1"]


@pytest.mark.parametrize("text", ATTACKS)
def test_a_formula_trigger_is_quoted_whole(text: str) -> None:
    """A trigger first, or after leading whitespace, is quoted; the text is kept whole."""
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize(("value", "cell"), [
    (None, ""), (True, "true"), (False, "false"), (-3, "-3"), (-2.5, "-2.5"), ("WF 2.1", "WF 2.1"),
    ("a=b", "a=b"), (" x", " x"), (datetime(2026, 1, 2, 4, tzinfo=timezone(timedelta(hours=1))),
                                   "2026-01-02T03:00:00Z"),
])
def test_data_is_exported_as_it_is(value: object, cell: str) -> None:
    """Numbers (a negative one is data), times, booleans and harmless text are left alone."""
    assert csv_cell(value) == cell
