"""core.markdown.pipe_table: the one Markdown table writer (evaluation report, study RESULTS.md)."""

import pytest

from fairsample.core.markdown import pipe_table


def test_default_alignment_and_escaping():
    lines = pipe_table(["Set", "FID", "KID"], [["a|b", "1.0", "2.0"], ["two\nlines", "3", "4"]])
    assert lines == [
        "| Set | FID | KID |",
        "| :--- | ---: | ---: |",
        "| a\\|b | 1.0 | 2.0 |",
        "| two lines | 3 | 4 |",
    ]


def test_explicit_alignment():
    assert pipe_table(["What", "Setting", "n"], [], "llr")[1] == "| :--- | :--- | ---: |"


@pytest.mark.parametrize(
    ("header", "rows", "align", "match"),
    [
        (["a", "b"], [["1"]], None, "has 1 cells for 2 columns"),
        (["a", "b"], [], "l", "one of 'l' / 'r' per column"),
        (["a", "b"], [], "lx", "one of 'l' / 'r' per column"),
    ],
)
def test_mismatched_rows_or_alignment_are_refused(header, rows, align, match):
    with pytest.raises(ValueError, match=match):
        pipe_table(header, rows, align)
