"""Parsing of resource quantities and durations as Kubernetes users write them."""

from __future__ import annotations

import math
import re

from ..exceptions import ConfigError

__all__ = ["format_bytes", "format_measured", "parse_cpus", "parse_duration", "parse_memory"]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SUGGEST = {"kb": "Ki", "mb": "Mi", "gb": "Gi", "tb": "Ti", "g": "Gi", "m": "Mi", "gib": "Gi",
            "mib": "Mi", "kib": "Ki", "tib": "Ti"}


def parse_memory(value: str | int | None) -> int | None:
    """Parse a Kubernetes memory quantity ("512Mi", "16Gi", "1G", 1073741824) to bytes.

    Raises:
        ConfigError: For anything else (zero too), with the spelling the user probably
            meant. Whether a machine has that much is the backend's check.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"memory must be a quantity like '16Gi', not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"memory must be positive, got {value}")
        return value
    m = _MEMORY.match(str(value))
    if m:
        number, unit = float(m.group(1)), m.group(2)
        scale = 1 if unit == "" else _BINARY.get(unit) or _DECIMAL.get(unit)
        if scale is not None:
            if int(number * scale) <= 0:
                raise ConfigError(f"memory must be positive, got {value!r}")
            return int(number * scale)
        hint = _SUGGEST.get(unit.lower())
        if hint:
            raise ConfigError(
                f"memory {value!r}: unit {unit!r} is not a Kubernetes unit; "
                f"did you mean '{m.group(1)}{hint}'? (Ki, Mi, Gi, Ti are powers of 1024)"
            )
    raise ConfigError(
        f"memory {value!r} is not a quantity; write it like '512Mi' or '16Gi'"
    )


def parse_cpus(value: str | float | int | None) -> float | None:
    """Parse a CPU quantity ("2", "500m", 0.5, 4) to a number of cores."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"cpus must be a number like 2 or '500m', not {value!r}")
    text = str(value).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ConfigError(f"cpus {value!r} is not a quantity; write it like 2, '0.5' or '500m'"
                          ) from None
    if not math.isfinite(cores) or cores <= 0:
        raise ConfigError(f"cpus must be positive, got {value!r}")
    return cores


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int | None) -> float | None:
    """Parse a duration ("30m", "1h30m", "45s", 600) to seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"a duration must be positive, got {value!r}")
        return float(value)
    text = str(value).strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text or total <= 0:
        try:
            return parse_duration(float(text))
        except ValueError:
            raise ConfigError(
                f"duration {value!r} is not understood; write it like '30m', '1h' or '90s'"
            ) from None
    return total


def format_bytes(n: int | None) -> str:
    """Format a byte count the way Kubernetes users read it (e.g. 16Gi)."""
    if n is None:
        return "-"
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        if n >= _BINARY[unit] and n % _BINARY[unit] == 0:
            return f"{n // _BINARY[unit]}{unit}"
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        if n >= _BINARY[unit]:
            return f"{n / _BINARY[unit]:.1f}{unit}"
    return str(n)


def format_measured(n: int) -> str:
    """A measured size, rounded as people read it: ``354Mi``, ``1.2Gi``."""
    if n >= 2**30:
        return f"{n / 2**30:.1f}Gi"
    return f"{round(n / 2**20)}Mi"
