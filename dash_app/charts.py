"""The charts on the page. To add one, add a Chart here: history, zoom and the live stream
follow from its topic and fields (docs/dashboard.md, "Add a chart")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """A y range of a chart, in the chart's shown unit, drawn as a shaded band.

    `alert=False` (a comfort range): readings outside [low, high] are out of range. `alert=True`
    (a danger zone): readings inside it are. Either limit may be None (open-ended)."""

    low: float | None
    high: float | None
    label: str
    alert: bool = False

    def outside(self, value: float) -> bool:
        """Whether a value (in the chart's shown unit) is out of range for this band."""
        above_low = self.low is None or value >= self.low
        below_high = self.high is None or value <= self.high
        return (above_low and below_high) if self.alert else not (above_low and below_high)


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    topic: str  # a topic of pipeline.schema.TOPICS
    fields: tuple[str, ...]  # numeric fields of that topic; one trace per room/device and field
    unit: str = ""  # the unit shown (after `scale`): "°C", "%", "GiB"
    tickformat: str | None = None  # d3 format of the y axis, e.g. ".1f"
    scale: float = 1.0  # shown value = stored value × scale (bytes -> GiB: 2**-30), history and live alike
    bands: tuple[Band, ...] = ()  # thresholds, in the shown unit; cards of these fields flag readings out of range


GIB = 2**-30  # bytes -> GiB: binary units everywhere (d3 formats have no binary prefixes, so the values are scaled)

CHARTS: tuple[Chart, ...] = (
    Chart("temperature", "Temperature", "temperature", ("value",), unit="°C", bands=(Band(18, 26, "comfort 18–26 °C"),)),
    Chart("humidity", "Relative humidity", "humidity", ("value",), unit="%", bands=(Band(30, 60, "comfort 30–60 %"),)),
    Chart("cpu", "CPU", "systemusage", ("cpu_percent",), unit="%", bands=(Band(90, None, "CPU above 90 %", alert=True),)),
    Chart("memory", "Memory used / total", "systemusage", ("memory_used", "memory_total"), unit="GiB", tickformat=".1f", scale=GIB),
    # No default band for memory: an absolute limit in GiB means different things on different devices.
)
