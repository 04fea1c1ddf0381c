"""Argument types of the command-line tools: a bad number is answered by argparse in one line
naming the flag (``error: argument --batch: -5 is not a positive integer``), never a traceback later."""

from __future__ import annotations

import argparse


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and (value != value or value in (float("inf"), float("-inf"))):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, image sizes, counts)."""
    n = _number(text, int)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive integer")
    return n


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (worker processes: 0 reads in this process; a step number)."""
    n = _number(text, int)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds)."""
    x = _number(text, float)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"{x} is not positive")
    return x


def fraction(text: str) -> float:
    """A number in [0, 1] (an opacity)."""
    x = _number(text, float)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"{x} is not in [0, 1]")
    return x


def crop_fraction(text: str) -> float:
    """A number in (0, 1] (``crop_pct``: the centre crop's share of the resized image)."""
    x = _number(text, float)
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"{x} is not in (0, 1]")
    return x
