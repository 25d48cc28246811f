"""Calendar steps of KServe's series frequencies: the time ``steps`` steps after a start,
and how many steps lie between two times (for matching a new series' observations to an
earlier forecast's steps). By hand, as dateutil's relativedelta would do it: the server
has no dateutil."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

FIXED = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}
MONTHS = {"month": 1, "quarter": 3, "year": 12}


def after(start: datetime, word: str, steps: int) -> datetime:
    """``steps`` steps of ``word`` after ``start``; calendar months keep the day, clipped
    to the month's length. ``OverflowError`` beyond year 9999."""
    if word in FIXED:
        return start + FIXED[word] * steps
    months = start.month - 1 + MONTHS[word] * steps
    year, month = start.year + months // 12, months % 12 + 1
    if not 1 <= year <= 9999:
        raise OverflowError(year)
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def steps_between(start: datetime, end: datetime, word: str) -> int | None:
    """n such that ``after(start, word, n) == end`` (negative when ``end`` is earlier), or
    None when ``end`` is not on ``start``'s grid of steps (or one is aware of its time
    zone and the other not)."""
    if (start.tzinfo is None) != (end.tzinfo is None):
        return None
    if word in FIXED:
        steps, left = divmod(end - start, FIXED[word])
        return steps if not left else None
    months = (end.year - start.year) * 12 + end.month - start.month
    n, rest = divmod(months, MONTHS[word])
    if rest:
        return None
    try:
        return n if after(start, word, n) == end else None
    except OverflowError:
        return None
