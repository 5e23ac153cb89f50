"""Value kinds for config.yaml: each turns one YAML value into a typed value or records a Problem.

The kinds never raise on bad input: they add a `Problem` (location, what is wrong, a hint) to
the `Context` and return `INVALID`, so one run reports every mistake in the file at once.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


class _Invalid:
    """Marker for a value that failed validation (its problem is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a config file, with where and what to do."""

    where: str
    message: str
    hint: str = ""
    level: str = "error"  # "error" or "warning"
    line: int | None = None

    def __str__(self) -> str:
        loc = self.where or "(top level)"
        if self.line is not None:
            loc += f" (line {self.line})"
        text = f"{loc}: {self.message}"
        if self.hint:
            text += f"; {self.hint}"
        return text if self.level == "error" else f"warning: {text}"


@dataclass
class Context:
    """Where problems are collected while one file is read."""

    base: Path  # relative paths in the file are taken from this folder
    lines: dict[str, int] = field(default_factory=dict)  # location -> YAML line (1-based)
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, message: str, hint: str = "", level: str = "error") -> None:
        """Record a problem at `where`, with the YAML line of the nearest known location."""
        self.problems.append(Problem(where, message, hint, level, self.line_of(where)))

    def warn(self, where: str, message: str, hint: str = "") -> None:
        """Record a warning (the file still loads)."""
        self.add(where, message, hint, level="warning")

    def line_of(self, where: str) -> int | None:
        """The YAML line of `where` or of its closest parent that has one."""
        while where:
            if where in self.lines:
                return self.lines[where]
            cut = max(where.rfind("."), where.rfind("["))
            where = where[:cut] if cut > 0 else ""
        return None

    @property
    def errors(self) -> list[Problem]:
        """Problems that stop the file from loading."""
        return [p for p in self.problems if p.level == "error"]


def join(where: str, key: str | int) -> str:
    """`targets` + 1 -> `targets[1]`; `targets[1]` + `link` -> `targets[1].link`."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the closest choice, or listing them all when none is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "expected one of: " + ", ".join(choices)


def type_name(value: Any) -> str:
    """How a YAML value reads to a person ('a number', 'a list', ...)."""
    if value is None:
        return "nothing (empty)"
    if isinstance(value, bool):
        return f"a yes/no value ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --- kinds ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]+")


class Text:
    """A non-empty string, optionally matching a pattern."""

    def __init__(self, pattern: re.Pattern[str] | None = None, what: str = "text") -> None:
        self.pattern, self.what = pattern, what

    def describe(self) -> str:
        """Type column of the reference table."""
        return self.what

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self.pattern \
                and self.pattern.fullmatch(str(value)):
            return str(value)  # `name: 42` is a fine name even though YAML made it a number
        if not isinstance(value, str) or not value.strip():
            ctx.add(where, f"expected {self.what}, got {type_name(value)}")
            return INVALID
        if self.pattern is not None and not self.pattern.fullmatch(value):
            ctx.add(where, f"{value!r} is not a valid {self.what}",
                    "use only letters, digits, '_' and '-' (it becomes part of MQTT topics)")
            return INVALID
        return value


class PathKind:
    """A file or folder path; relative ones are taken from the config file's folder."""

    def describe(self) -> str:
        """Type column of the reference table."""
        return "path"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            ctx.add(where, f"expected a path, got {type_name(value)}")
            return INVALID
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base / path


class Integer:
    """A whole number in a range; `hex` also accepts strings such as "0x48"."""

    def __init__(self, lo: int, hi: int | None = None, hex: bool = False) -> None:
        self.lo, self.hi, self.hex = lo, hi, hex

    def describe(self) -> str:
        """Type column of the reference table."""
        return "integer (hex ok)" if self.hex else "integer"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if self.hex and isinstance(value, str) and _HEX_RE.fullmatch(value.strip()):
            value = int(value.strip(), 16)
        if isinstance(value, bool) or not isinstance(value, int):
            hint = "write it without quotes" if isinstance(value, str) and value.isdigit() else ""
            if self.hex and not hint:
                hint = "decimal or hex (0x48) both work"
            ctx.add(where, f"expected a whole number, got {type_name(value)}", hint)
            return INVALID
        if value < self.lo or (self.hi is not None and value > self.hi):
            shown = (lambda n: f"0x{n:X}") if self.hex else str
            top = shown(self.hi) if self.hi is not None else "any"
            ctx.add(where, f"{shown(value)} is out of range", f"allowed: {shown(self.lo)}..{top}")
            return INVALID
        return value


class Boolean:
    """true or false (YAML's yes/no/on/off arrive as booleans too)."""

    def describe(self) -> str:
        """Type column of the reference table."""
        return "true/false"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if not isinstance(value, bool):
            hint = "write true or false without quotes" if isinstance(value, str) else ""
            ctx.add(where, f"expected true or false, got {type_name(value)}", hint)
            return INVALID
        return value


class Choice:
    """One of a fixed set of words."""

    def __init__(self, *options: str, refused: dict[str, str] | None = None) -> None:
        self.options, self.refused = options, refused or {}

    def describe(self) -> str:
        """Type column of the reference table."""
        return " \\| ".join(self.options)

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if isinstance(value, str) and value in self.refused:
            ctx.add(where, f"{value!r} is not allowed here", self.refused[value])
            return INVALID
        if not isinstance(value, str) or value not in self.options:
            word = value if isinstance(value, str) else str(value)
            ctx.add(where, f"expected one of {', '.join(self.options)}, got {type_name(value)}",
                    did_you_mean(word, self.options))
            return INVALID
        return value


class Duration:
    """A time with a unit ("10ms", "2s", "5m", "1h", "1m30s") -> float seconds."""

    def __init__(self, lo: float = 0.0, hi: float | None = None, whole: bool = False) -> None:
        self.lo, self.hi, self.whole = lo, hi, whole

    def describe(self) -> str:
        """Type column of the reference table."""
        return "duration"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ctx.add(where, f"a duration needs a unit, got the bare number {value}",
                    f'write "{value}s" for seconds or "{value}ms" for milliseconds')
            return INVALID
        text = value.replace(" ", "") if isinstance(value, str) else ""
        if not text or not re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
            ctx.add(where, "expected a duration such as 10ms, 2s, 5m or 1h, "
                    f"got {type_name(value)}")
            return INVALID
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        if seconds < self.lo or (self.hi is not None and seconds > self.hi):
            top = f"{self.hi:g}s" if self.hi is not None else "no limit"
            ctx.add(where, f"{value} is out of range", f"allowed: {self.lo:g}s..{top}")
            return INVALID
        if self.whole:
            if seconds != int(seconds):
                ctx.add(where, f"{value} is not a whole number of seconds",
                        "MQTT counts in seconds")
                return INVALID
            return int(seconds)
        return seconds


class Size:
    """A byte count with a unit ("256KiB", "64MiB", "1GB") -> int bytes."""

    def __init__(self, lo: int = 1) -> None:
        self.lo = lo

    def describe(self) -> str:
        """Type column of the reference table."""
        return "size"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ctx.add(where, f"a size needs a unit, got the bare number {value}",
                    f'write e.g. "{value}B", "64KiB" or "64MiB"')
            return INVALID
        match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            ctx.add(where, f"expected a size such as 512KiB or 64MiB, got {type_name(value)}",
                    "units: B, KiB, MiB, GiB (binary) or kB, MB, GB (decimal)")
            return INVALID
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
        if size < self.lo:
            ctx.add(where, f"{value} is too small", f"at least {self.lo} bytes")
            return INVALID
        return size


class ListOf:
    """A YAML list of one kind; `unique` refuses repeats."""

    def __init__(self, item: Any, unique: bool = True) -> None:
        self.item, self.unique = item, unique

    def describe(self) -> str:
        """Type column of the reference table."""
        return f"list of {self.item.describe()}"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if not isinstance(value, list):
            ctx.add(where, f"expected a list, got {type_name(value)}",
                    "write [a, b] or one '- item' per line")
            return INVALID
        out = []
        for i, item in enumerate(value):
            parsed = self.item(item, join(where, i), ctx)
            if self.unique and parsed is not INVALID and parsed in out:
                ctx.add(join(where, i), f"{item!r} is listed twice", "list it once")
                continue
            out.append(parsed)
        return tuple(out)
