"""The time-range control: live, 1 h, 24 h, 7 d or custom dates, kept in the URL.

The URL's query string holds the view (`?range=24h`, `?range=custom&from=2026-11-20&to=2026-11-22`,
nothing for live): the page opens with it, each choice pushes a browser history entry, and the
back button brings the previous view back (Dash Pages renders the page again from the URL).
"""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dash import Input, Output, dcc, html

RANGES = {"live": "Live", "1h": "1 h", "24h": "24 h", "7d": "7 d", "custom": "Custom"}
SECONDS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
LIVE_LEAD_MS = 60_000  # the live window reaches a minute ahead: clocks of sensors differ a little


def from_query(query: dict) -> tuple[str, str | None, str | None]:
    """(range, from, to) of a URL query; an unknown range means live, a date that is not
    YYYY-MM-DD is left out (the date picker keeps its default). window() checks the span."""
    choice = str(query.get("range") or "live")
    if choice not in RANGES:
        return "live", None, None
    if choice != "custom":
        return choice, None, None

    def day(value) -> str | None:
        try:
            return date.fromisoformat(str(value)[:10]).isoformat() if value else None
        except ValueError:
            return None

    return choice, day(query.get("from")), day(query.get("to"))


def layout(query: dict | None = None) -> html.Div:
    today = datetime.now(UTC).date()
    choice, first, last = from_query(query or {})
    return html.Div(
        className="controls",
        children=[
            dcc.RadioItems(
                id="range", options=[{"label": v, "value": k} for k, v in RANGES.items()], value=choice,
                inline=True, className="range",
            ),
            dcc.DatePickerRange(
                id="custom-dates", start_date=first or today - timedelta(days=1), end_date=last or first or today,
                display_format="YYYY-MM-DD", className="custom-dates", style={"display": "inline-block" if choice == "custom" else "none"},
            ),
        ],
    )


EARLIEST = date(2000, 1, 1)  # no reading is older (pipeline.schema.MIN_TS_MS)


class BadRange(ValueError):
    """A range the page cannot show; str() says why, for the page."""


def window(choice: str, start_date: str | None, end_date: str | None, now_ms: int, live_window_s: int) -> tuple[int, int]:
    """[start, end) in epoch ms (UTC) for the chosen range."""
    if choice == "live":
        return now_ms - live_window_s * 1000, now_ms + LIVE_LEAD_MS
    if choice in SECONDS:
        return now_ms - SECONDS[choice] * 1000, now_ms
    if choice != "custom":
        raise BadRange(f"unknown range {choice!r}")
    today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    try:
        start = date.fromisoformat(str(start_date or today)[:10])
        end = date.fromisoformat(str(end_date or start)[:10])
    except ValueError:
        raise BadRange(f"dates {start_date!r} to {end_date!r} are not YYYY-MM-DD") from None
    start, end = sorted((start, end))
    if start < EARLIEST or end > today + timedelta(days=1):
        raise BadRange(f"choose days between {EARLIEST} and {today + timedelta(days=1)}")
    midnight = lambda d: int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    return midnight(start), midnight(end + timedelta(days=1))


def describe(choice: str, start_ms: int, end_ms: int) -> str:
    """What the badge says outside live: the range the charts show."""
    if choice in SECONDS:
        return f"last {RANGES[choice]}"
    day = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()
    first, last = day(start_ms), day(end_ms - 1)
    return first if first == last else f"{first} to {last}"


def register(app) -> None:
    app.clientside_callback(
        "(choice) => ({display: choice === 'custom' ? 'inline-block' : 'none'})",
        Output("custom-dates", "style"),
        Input("range", "value"),
    )
    # The view goes into the URL as a new history entry (no reload); one already there is left
    # alone, so a page rendered from the URL (a link, the back button) pushes nothing.
    app.clientside_callback(
        """(choice, start, end, _shown) => {
            const query = new URLSearchParams();
            if (choice && choice !== "live") query.set("range", choice);
            if (choice === "custom") {
                if (start) query.set("from", String(start).slice(0, 10));
                if (end) query.set("to", String(end).slice(0, 10));
            }
            const search = query.toString() ? "?" + query : "";
            if (search !== window.location.search) {
                window.history.pushState({}, "", window.location.pathname + search);
            }
        }""",
        Input("range", "value"), Input("custom-dates", "start_date"), Input("custom-dates", "end_date"),
    )
