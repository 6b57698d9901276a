"""Alert rules: what the alerter watches, read from one TOML file (ALERT_RULES) or the defaults.

A file is a list of `[[rules]]` tables, each with a `name` (unique), a `kind` and its fields:

- `above` / `below`: a reading's `field` of `topic` beyond `threshold` (stored units) for `for_s`
  seconds of event time. The alert stays active until the value is back past the threshold by
  `hysteresis`, so a value hovering at the line does not flap.
- `stale`: a sensor of `topic` that has not reported for `intervals` of its reporting intervals
  (1 / RATE), and at least `min_s` seconds.
- `dead_letters`: at least `count` dead letters on `<topic>.dlq` within `within_s` seconds; it
  resolves after `within_s` without one.

Without a file the rules come from the bands the charts draw (dash_app/charts.py): a comfort band
gives an `above` rule at its high limit and a `below` rule at its low one, a danger zone an
`above` rule at its low limit; each with `for_s` 60 and a hysteresis of 2 % of the threshold. And
per topic a `stale` rule (5 intervals, as the cards' stale mark) and a `dead_letters` rule.

A bad file is one line naming the rule, the field and what it accepts (`load` raises ValueError).
"""
from __future__ import annotations

import tomllib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.schema import TOPICS

DEFAULT_FOR_S = 60.0
DEFAULT_HYSTERESIS = 0.02  # of the threshold
RuleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
TopicName = Literal["temperature", "humidity", "systemusage"]

# What each field accepts, for the one-line message about a bad rule.
ACCEPTS = {
    "name": "a name of letters, digits, '.', '_' or '-' (up to 64), unique in the file",
    "kind": "above, below, stale or dead_letters",
    "topic": ", ".join(TOPICS),
    "field": "a numeric field of the topic: " + "; ".join(f"{t.name}: {', '.join(t.numeric)}" for t in TOPICS.values()),
    "threshold": "a number",
    "for_s": "a number of seconds ≥ 0",
    "hysteresis": "a number ≥ 0",
    "intervals": "an integer ≥ 1",
    "min_s": "a number of seconds ≥ 0",
    "count": "an integer ≥ 1",
    "within_s": "a number of seconds > 0",
}


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: RuleName
    topic: TopicName


class Threshold(_Rule):
    kind: Literal["above", "below"]
    field: str
    threshold: float
    for_s: Annotated[float, Field(ge=0)] = DEFAULT_FOR_S
    hysteresis: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _field_of_topic(self) -> Threshold:
        if self.field not in TOPICS[self.topic].numeric:
            raise ValueError(f"field {self.field!r} is not a numeric field of {self.topic}")
        return self

    @property
    def for_ms(self) -> int:
        return round(self.for_s * 1000)

    def describe(self) -> str:
        return f"{self.topic} {self.field} {self.kind} {self.threshold:g} for {self.for_s:g} s"


class Stale(_Rule):
    kind: Literal["stale"]
    intervals: Annotated[int, Field(ge=1)] = 5
    min_s: Annotated[float, Field(ge=0)] = 10.0

    def limit_ms(self, interval_ms: float) -> int:
        """How long a sensor reporting every `interval_ms` may be silent."""
        return round(max(self.intervals * interval_ms, self.min_s * 1000))

    def describe(self) -> str:
        return f"{self.topic} sensor silent for {self.intervals} intervals"


class DeadLetters(_Rule):
    kind: Literal["dead_letters"]
    count: Annotated[int, Field(ge=1)] = 1
    within_s: Annotated[float, Field(gt=0)] = 60.0

    @property
    def within_ms(self) -> int:
        return round(self.within_s * 1000)

    def describe(self) -> str:
        return f"{self.count} dead letter(s) on {self.topic}.dlq within {self.within_s:g} s"


Rule = Annotated[Threshold | Stale | DeadLetters, Field(discriminator="kind")]
_RULE = TypeAdapter(Rule)


def defaults() -> tuple[Rule, ...]:
    """The rules the charts' bands imply, plus a stale and a dead-letter rule per topic."""
    from dash_app.charts import CHARTS  # plain declarations: no Dash is imported

    rules: list[Rule] = []
    for chart in CHARTS:
        for field in chart.fields:
            for band in chart.bands:
                limits = [("above", band.low)] if band.alert else [("above", band.high), ("below", band.low)]
                for kind, shown in limits:
                    if shown is None:
                        continue
                    threshold = shown / chart.scale  # rules are in stored units
                    series = chart.id if len(chart.fields) == 1 else f"{chart.id}-{field}"
                    name = f"{series}-{'high' if kind == 'above' else 'low'}"
                    rules.append(Threshold(name=name, topic=chart.topic, kind=kind, field=field, threshold=threshold,
                                           hysteresis=round(abs(threshold) * DEFAULT_HYSTERESIS, 6)))
    for topic in TOPICS:
        rules.append(Stale(name=f"{topic}-stale", topic=topic, kind="stale"))
        rules.append(DeadLetters(name=f"{topic}-dead-letters", topic=topic, kind="dead_letters"))
    return tuple(rules)


def load(path: str) -> tuple[Rule, ...]:
    """The rules of ALERT_RULES (empty: the defaults); ValueError with one line on a bad file."""
    if not path:
        return defaults()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not TOML: {exc}") from None
    unknown = sorted(set(document) - {"rules"})
    if unknown:
        raise ValueError(f"unknown table {unknown[0]!r}: a rule file holds [[rules]] tables only")
    entries = document.get("rules", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("`rules` must be [[rules]] tables")
    rules: list[Rule] = []
    for i, entry in enumerate(entries):
        label = f"rule {entry.get('name')!r}" if isinstance(entry.get("name"), str) else f"rule #{i + 1}"
        try:
            rules.append(_RULE.validate_python(entry))
        except ValidationError as exc:
            raise ValueError(f"{label}: {_problem(exc)}") from None
        if any(r.name == rules[-1].name for r in rules[:-1]):
            raise ValueError(f"{label}: name given twice; expected {ACCEPTS['name']}")
    return tuple(rules)


def _problem(exc: ValidationError) -> str:
    """The first error of a rule as `field: what is wrong; expected what it accepts`."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if str(p) not in ("above", "below", "stale", "dead_letters", "function-after[_field_of_topic()]")]
    where = loc[-1] if loc else ""
    if err["type"] == "missing":
        return f"{where} is missing; expected {ACCEPTS.get(where, 'a value')}"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r} for its kind"
    if err["type"] == "union_tag_not_found":
        return f"kind is missing; expected {ACCEPTS['kind']}"
    if err["type"] == "union_tag_invalid":
        return f"kind={err['input'].get('kind')!r} refused; expected {ACCEPTS['kind']}"
    if err["type"] == "value_error":  # the field-of-topic check
        return f"{err['ctx']['error']}; expected {ACCEPTS['field']}"
    return f"{where}={err.get('input')!r} refused; expected {ACCEPTS.get(where, err['msg'])}"
