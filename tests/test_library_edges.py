"""Library edge cases: names with a line break, folders in the way of an artifact, what a refused or finished run
leaves behind, and Ctrl-C while an artifact is saved."""

from __future__ import annotations

import pytest

from vidbooth import library
from vidbooth.errors import UserError


@pytest.mark.parametrize("name", ["S*\n", "dog\n", "a\nb", "\n", "S*\r\n"])
def test_a_name_with_a_line_break_is_refused_and_shown_escaped(name):
    with pytest.raises(UserError, match=r"invalid motion name '.*\\n.*'") as refused:
        library.validate_name(name, "motion")
    assert "\n" not in str(refused.value)
    assert library.validate_name("S*") == "S*"
