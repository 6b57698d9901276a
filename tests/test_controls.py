"""The time-range control's windows."""
from datetime import UTC, datetime

from dash_app.controls import LIVE_LEAD_MS, window

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
