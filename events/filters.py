"""Subscription filters: which events a subscriber wants. Pure functions, no I/O.

A type filter is a prefix on dot boundaries, like containerd's topic filters: ``"task"`` matches
``task.exit`` and ``task.exec.start`` (and ``task`` itself) but not ``taskfoo``; ``"task.exit"``
matches ``task.exit`` and ``task.exit.x`` but not ``task.exited``. Dot boundaries keep a filter
from silently catching an unrelated future type that merely shares leading letters. A trailing
dot (``"task."``) means the same as without it. Several filters of one kind are alternatives
(OR); types and ids combine with AND. An empty list means "any".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from events.model import Event

__all__ = ["make_filter", "matches", "type_matches"]


def _normalise(types: Sequence[str]) -> tuple[str, ...]:
    if isinstance(types, str):  # a lone string is one filter, not a sequence of letters
        types = (types,)
    return tuple(t.rstrip(".") for t in types)


def type_matches(event_type: str, prefix: str) -> bool:
    """True if ``event_type`` is ``prefix`` or starts with ``prefix + "."``."""
    prefix = prefix.rstrip(".")
    if not prefix:
        return True
    return event_type == prefix or event_type.startswith(prefix + ".")


def matches(event: Event, types: Sequence[str] = (), ids: Sequence[str] = ()) -> bool:
    """Does ``event`` pass the type filters (any of) and the id filters (any of)?"""
    return make_filter(types, ids)(event)


def make_filter(types: Sequence[str] = (), ids: Sequence[str] = ()) -> Callable[[Event], bool]:
    """A predicate for many events: normalises the filters once."""
    prefixes = _normalise(types)
    if "" in prefixes:
        prefixes = ()
    exact = frozenset(prefixes)
    dotted = tuple(p + "." for p in prefixes)
    wanted_ids = frozenset((ids,) if isinstance(ids, str) else ids)

    def predicate(event: Event) -> bool:
        if wanted_ids and event.id not in wanted_ids:
            return False
        if not prefixes:
            return True
        return event.type in exact or event.type.startswith(dotted)

    return predicate
