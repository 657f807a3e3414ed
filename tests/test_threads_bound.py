"""--threads takes 0 to MAX_THREADS inclusive."""
import pytest

from fastvae import options


def test_threads_accepts_the_maximum_and_refuses_one_more():
    assert options.threads(options.MAX_THREADS) == options.MAX_THREADS == 1024
    with pytest.raises(options.BadValue, match=r"must be at most 1024, got 1025"):
        options.threads(1025)
