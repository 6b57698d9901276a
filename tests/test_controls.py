"""The time-range control's windows."""
from datetime import UTC, datetime

import pytest

from dash_app.controls import LIVE_LEAD_MS, BadRange, describe, window
from dash_app.graphs import _axis_ms

NOW = int(datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp() * 1000)


def test_fixed_ranges_end_now():
    assert window("1h", None, None, NOW, 300) == (NOW - 3_600_000, NOW)
    assert window("7d", None, None, NOW, 300) == (NOW - 7 * 86_400_000, NOW)


def test_live_window_reaches_slightly_ahead():
    assert window("live", None, None, NOW, 300) == (NOW - 300_000, NOW + LIVE_LEAD_MS)


def test_custom_dates_cover_whole_utc_days_in_either_order():
    start, end = window("custom", "2026-11-20", "2026-11-18T00:00:00", NOW, 300)
    assert start == int(datetime(2026, 11, 18, tzinfo=UTC).timestamp() * 1000)
    assert end == int(datetime(2026, 11, 21, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    "start, end, why",
    [("2026-13-45", None, "not YYYY-MM-DD"), ("0001-01-01", "9999-12-31", "choose days between"), (["x"], None, "not YYYY-MM-DD")],
)
def test_impossible_custom_dates_are_refused_with_a_reason(start, end, why):
    with pytest.raises(BadRange, match=why):
        window("custom", start, end, NOW, 300)


def test_an_unknown_range_is_refused():
    with pytest.raises(BadRange, match="unknown range"):
        window("forever", None, None, NOW, 300)


@pytest.mark.parametrize("bad", ["not a date", None, {"a": 1}, True, 1e300, "99999-01-01", -5])
def test_a_garbage_zoom_position_is_a_value_or_type_error(bad):
    with pytest.raises((ValueError, TypeError, OverflowError)):
        _axis_ms(bad)


def test_describe_names_the_range_shown_outside_live():
    start, end = window("custom", "2026-11-18", "2026-11-20", NOW, 300)
    assert describe("custom", start, end) == "2026-11-18 to 2026-11-20"
    assert describe("24h", *window("24h", None, None, NOW, 300)) == "last 24 h"

