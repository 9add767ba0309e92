"""Schedules: a cron expression checked field by field, said in words, and its next run.

A schedule is five cron fields (minute, hour, day of month, month, day of week) or one
of the shortcuts ``@hourly @daily @midnight @weekly @monthly @yearly @annually``,
evaluated in a time zone (``--timezone``, an IANA name; default: this machine's).
croniter computes the next run, cron-descriptor says it in words ("At 03:00 AM").

A bad expression is a :class:`~kubetorch_jupyter.ConfigError` naming the field and why
(``hour field '25': 25 is out of range 0-23``); croniter's own messages name neither.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, tzinfo

from croniter import croniter

from ..exceptions import ConfigError

__all__ = ["FIELDS", "Schedule", "check_timezone"]

#: The five fields: name, lowest, highest, names allowed instead of numbers.
FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                      "nov", "dec")),
    ("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)

#: The @shortcuts cron understands, as five fields (``@reboot`` is no schedule).
SHORTCUTS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_ITEM = re.compile(r"^(?P<range>\*|[a-z0-9]+(-[a-z0-9]+)?)(/(?P<step>.*))?$")


def check_timezone(name: str | None) -> tzinfo | None:
    """The zone called ``name`` (None: this machine's local time).

    Raises:
        ConfigError: When no such zone exists.
    """
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}: use an IANA name such as "
                          "'Europe/Paris', 'America/New_York' or 'UTC'") from None


def _value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text in names:
        return names.index(text) + (1 if field == "month" else 0)
    if not text.isdigit():
        allowed = f", or {names[0]}-{names[-1]}" if names else ""
        raise ConfigError(f"{field} field: {text!r} is not a number{allowed}")
    value = int(text)
    if not low <= value <= high:
        raise ConfigError(f"{field} field: {value} is out of range {low}-{high}")
    return value


def _check_field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> None:
    for item in text.lower().split(","):
        m = _ITEM.match(item)
        if not item or m is None:
            raise ConfigError(f"{field} field {text!r}: {item!r} is not a value, a range "
                              "(a-b), a step (*/n) or a list (a,b)")
        span = m.group("range")
        if span != "*":
            first, _, last = span.partition("-")
            a = _value(first, field, low, high, names)
            if last and _value(last, field, low, high, names) < a:
                raise ConfigError(f"{field} field {text!r}: the range {span} runs backwards")
        step = m.group("step")
        if step is not None and (not step.isdigit() or int(step) == 0):
            raise ConfigError(f"{field} field {text!r}: the step {step!r} must be a whole "
                              "number > 0")


@dataclass(frozen=True)
class Schedule:
    """A checked cron schedule in a time zone.

    Attributes:
        expression: As the user wrote it (``"0 3 * * *"``, ``"@daily"``).
        timezone: An IANA zone name, or None for this machine's local time.
    """

    expression: str
    timezone: str | None = None

    def __post_init__(self) -> None:
        check_timezone(self.timezone)
        fields = self.fields.split()
        if self.expression.strip().startswith("@") and self.expression.strip() not in SHORTCUTS:
            raise ConfigError(f"unknown schedule {self.expression.strip()!r}: use five cron "
                              f"fields or one of {', '.join(SHORTCUTS)}")
        if len(fields) != 5:
            raise ConfigError(
                f"schedule {self.expression!r} has {len(fields)} field"
                f"{'s' if len(fields) != 1 else ''}; cron takes 5: minute hour day-of-month "
                "month day-of-week (e.g. '0 3 * * *': every day at 03:00)")
        for text, (name, low, high, names) in zip(fields, FIELDS, strict=True):
            _check_field(text, name, low, high, names)
        if not croniter.is_valid(self.fields):  # what we let through, croniter must take
            raise ConfigError(f"schedule {self.expression!r} is not a valid cron expression")

    @property
    def fields(self) -> str:
        """The five fields (a shortcut expanded)."""
        text = " ".join(self.expression.split())
        return SHORTCUTS.get(text, text)

    @property
    def zone(self) -> tzinfo | None:
        """The time zone (None: local time)."""
        return check_timezone(self.timezone)

    def describe(self) -> str:
        """The schedule in words: ``"At 03:00 AM, Monday through Friday"``."""
        from cron_descriptor import get_description

        words = str(get_description(self.fields))
        return f"{words} ({self.timezone})" if self.timezone else words

    def next_run(self, after: datetime | None = None) -> datetime:
        """The next time the schedule fires after ``after`` (default: now), zone-aware."""
        start = after or datetime.now(self.zone).astimezone(self.zone)
        if self.zone is not None:
            start = start.astimezone(self.zone)
        nxt: datetime = croniter(self.fields, start).get_next(datetime)
        return nxt

    def matches(self, when: datetime) -> bool:
        """Whether the schedule fires in the minute of ``when`` (taken in its zone)."""
        local = when.astimezone(self.zone) if self.zone is not None else when.astimezone()
        return bool(croniter.match(self.fields, local.replace(second=0, microsecond=0,
                                                              tzinfo=None)))

    def machine_fields(self) -> str:
        """The fields a crontab on this machine holds for this schedule.

        Debian's cron has no per-line time zone. In this machine's zone the fields are
        the schedule's own; in another, the line fires at the schedule's minutes of every
        hour and the run itself checks :meth:`matches` (right across daylight saving
        changes), so a job in another zone costs one short process start an hour.
        """
        if self.zone is None or self.same_zone_as_machine():
            return self.fields
        return f"{self.fields.split()[0]} * * * *"

    def same_zone_as_machine(self) -> bool:
        """Whether the schedule's zone is this machine's local time all year."""
        if self.zone is None:
            return True
        year = datetime.now().year
        probes = [datetime(year, month, 15, 12) for month in (1, 4, 7, 10)]
        return all(p.replace(tzinfo=self.zone).utcoffset() == p.astimezone().utcoffset()
                   for p in probes)
