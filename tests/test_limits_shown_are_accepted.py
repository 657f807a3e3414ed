"""A limit an error message shows is a number the check accepts: typing it in is not
refused again (float32's max at 4 digits, 3.403e+38, is past it; its smallest normal,
1.175e-38, is below it)."""
from __future__ import annotations

import re

import pytest

from fastvae import options as o
from fastvae import validation

NUMBER = r"(\d\.\d+e[+-]\d+)"


def _shown(call, bad, pattern):
    with pytest.raises((o.BadValue, ValueError)) as e:
        call(bad)
    found = re.search(pattern, str(e.value))
    assert found, str(e.value)
    return found.group(1)


@pytest.mark.parametrize("call, bad, pattern", [
    (o.learning_rate, "1e38", "must be at most " + NUMBER),
    (o.positive_float, "1e39", r"range \(\+-" + NUMBER),
    (o.positive_float, "1e-39", r"normal number \(" + NUMBER),
    (lambda v: validation.check_number("beta", float(v)), "1e39", r"range \(\+-" + NUMBER),
    (lambda v: validation.check_number("beta", -float(v)), "1e39", r"range \(\+-" + NUMBER),
])
def test_the_limit_a_message_shows_is_accepted(call, bad, pattern):
    shown = _shown(call, bad, pattern)
    call(shown)   # accepted as it is shown


@pytest.mark.parametrize("limit", [3.4028234663852886e38, 1.1754943508222875e-38, 0.5, 1e5,
                                   123456.0, 9.99951e-3])
def test_limit_text_rounds_into_the_range(limit):
    down, up = (float(validation.limit_text(limit, upper)) for upper in (True, False))
    assert down <= limit <= up and up - down <= 1e-3 * limit
