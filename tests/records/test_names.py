"""People's names as the console and the reports show them (bcd_node.records.names)."""

from __future__ import annotations

import pytest

from bcd_node.records.names import display_name
from bcd_node.report.pdf import _person
from webadmin.helpers import fmt_pn


@pytest.mark.parametrize(("name", "console", "report"), [
    ("House^Gregory", "House, Gregory", "HOUSE, Gregory"),
    # a prefix goes before the given names, a suffix after them; both were lost on the reports
    # and the console put the title last ("Müller, Anna Maria Dr.")
    ("Müller^Anna^Maria^Dr.", "Müller, Dr. Anna Maria", "MÜLLER, Dr. Anna Maria"),
    ("Ñúñez García^José Ángel^^Prof.^III", "Ñúñez García, Prof. José Ángel III",
     "ÑÚÑEZ GARCÍA, Prof. José Ángel III"),
    # component groups: alphabetic, then the ideographic one in brackets; they were split on
    # every ^ across the groups ("YAMADA, Tarou=山田 太郎=やまだ")
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou (山田, 太郎)",
     "YAMADA, Tarou (山田, 太郎)"),
    ("=山田^太郎", "山田, 太郎", "山田, 太郎"),
    ("Doe", "Doe", "Doe"),
    ("Doe^", "Doe", "DOE"),
])
def test_a_name_is_shown_family_first_with_its_title_and_groups(name: str, console: str,
                                                                 report: str) -> None:
    assert fmt_pn(name) == console == display_name(name)
    assert _person(name) == report


def test_no_name_is_a_dash_in_the_console() -> None:
    assert fmt_pn(None) == fmt_pn("") == fmt_pn("^") == "—"
