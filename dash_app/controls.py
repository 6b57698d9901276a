"""The time-range control: live, 1 h, 24 h, 7 d or custom dates."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dash import Input, Output, dcc, html

RANGES = {"live": "Live", "1h": "1 h", "24h": "24 h", "7d": "7 d", "custom": "Custom"}
SECONDS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
LIVE_LEAD_MS = 60_000  # the live window reaches a minute ahead: clocks of sensors differ a little


def layout() -> html.Div:
    today = datetime.now(UTC).date()
    return html.Div(
        className="controls",
        children=[
            dcc.RadioItems(
                id="range", options=[{"label": v, "value": k} for k, v in RANGES.items()], value="live",
                inline=True, className="range",
            ),
            dcc.DatePickerRange(
                id="custom-dates", start_date=today - timedelta(days=1), end_date=today,
                display_format="YYYY-MM-DD", className="custom-dates", style={"display": "none"},
            ),
        ],
    )


def window(choice: str, start_date: str | None, end_date: str | None, now_ms: int, live_window_s: int) -> tuple[int, int]:
    """[start, end) in epoch ms (UTC) for the chosen range."""
    if choice == "live":
        return now_ms - live_window_s * 1000, now_ms + LIVE_LEAD_MS
    if choice in SECONDS:
        return now_ms - SECONDS[choice] * 1000, now_ms
    start = date.fromisoformat((start_date or "")[:10] or datetime.now(UTC).date().isoformat())
    end = date.fromisoformat((end_date or "")[:10] or start.isoformat())
    midnight = lambda d: int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    return midnight(min(start, end)), midnight(max(start, end) + timedelta(days=1))


def register(app) -> None:
    app.clientside_callback(
        "(choice) => ({display: choice === 'custom' ? 'inline-block' : 'none'})",
        Output("custom-dates", "style"),
        Input("range", "value"),
    )
