"""Working days in China: the official calendar with the make-up working days of holiday weeks (调休).

`chinese-calendar` knows the years the State Council has published; for a later year the fallback is weekdays
minus the public holidays `holidays.China` knows (no make-up days), with a warning.
"""

from __future__ import annotations

import functools
import logging
from datetime import date, datetime, timedelta, timezone

import chinese_calendar
import holidays

log = logging.getLogger(__name__)
CHINA = timezone(timedelta(hours=8))


@functools.cache
def _fallback_holidays(year: int) -> frozenset[date]:
    log.warning(
        "the official working-day calendar does not know this year yet: counting weekdays minus public holidays",
        extra={"year": year},
    )
    return frozenset(holidays.China(years=year))


def is_working_day(day: date) -> bool:
    """Whether `day` is a working day in mainland China."""
    try:
        return chinese_calendar.is_workday(day)
    except NotImplementedError:
        return day.weekday() < 5 and day not in _fallback_holidays(day.year)


def add_working_days(start: datetime, days: int) -> datetime:
    """The same local (Asia/Shanghai) time of day, `days` working days after `start` (UTC out)."""
    local = start.astimezone(CHINA)
    day, counted = local.date(), 0
    while counted < days:
        day += timedelta(days=1)
        if is_working_day(day):
            counted += 1
    return datetime.combine(day, local.timetz()).astimezone(start.tzinfo or CHINA)
