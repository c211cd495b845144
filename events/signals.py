"""Signal names and numbers: the one parser every side of the system uses.

``TERM``, ``SIGTERM``, ``term`` and ``15`` all mean SIGTERM. Only real signals are accepted:
names are looked up among :class:`signal.Signals` (so ``SIG_SETMASK``, ``SIG_IGN`` and other
attributes of the :mod:`signal` module that are not signals are refused), and numbers must be
between 1 and ``NSIG - 1`` (0 is not a signal a user sends: it only probes a pid).
"""

from __future__ import annotations

import signal

__all__ = ["InvalidSignal", "parse_signal", "signal_name"]


class InvalidSignal(ValueError):
    """Not a signal: the message says what is accepted."""


def parse_signal(value: object) -> int:
    """A signal number or name -> its number; :class:`InvalidSignal` for anything else."""
    if isinstance(value, bool):
        raise InvalidSignal(f"unknown signal {value!r}: use a name like TERM or a number")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        else:
            name = text.upper()
            name = name if name.startswith("SIG") else "SIG" + name
            member = signal.Signals.__members__.get(name)
            if member is None:
                raise InvalidSignal(f"unknown signal {value!r}: use a name like TERM, KILL, "
                                    "HUP, INT, USR1 or a number")
            return int(member)
    if isinstance(value, int):
        if 0 < value < signal.NSIG:
            return value
        raise InvalidSignal(f"invalid signal number {value}: use 1-{signal.NSIG - 1}")
    raise InvalidSignal(f"unknown signal {value!r}: use a name like TERM or a number")


def signal_name(number: int) -> str:
    """``15`` -> ``"SIGTERM"``; a real-time or unnamed signal -> ``"SIG42"``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
