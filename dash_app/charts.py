"""The charts on the page. To add one, add a Chart here: history, zoom and the live stream
follow from its topic and fields (see the README's "Add a chart")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    topic: str  # a topic of pipeline.schema.TOPICS
    fields: tuple[str, ...]  # numeric fields of that topic; one trace per room/device and field
    unit: str = ""
    tickformat: str | None = None  # d3 format of the y axis, e.g. ".2s" for bytes


CHARTS: tuple[Chart, ...] = (
    Chart("temperature", "Temperature", "temperature", ("value",), unit="°C"),
    Chart("humidity", "Relative humidity", "humidity", ("value",), unit="%"),
    Chart("cpu", "CPU", "systemusage", ("cpu_percent",), unit="%"),
    Chart("memory", "Memory used / total", "systemusage", ("memory_used", "memory_total"), unit="B", tickformat=".3s"),
)
