"""A searched key's domain (choice, int, float, loguniform) and the error every bad
sweep spec raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DOMAINS = ("choice", "int", "float", "loguniform")


class SweepError(ValueError):
    """A sweep spec or request is wrong; the message says how to fix it."""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise SweepError(message)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Domain:
    """One searched key: ``{choice: [...]}``, ``{int: [lo, hi]}``, ``{float: [lo, hi]}``
    or ``{loguniform: [lo, hi]}`` (``log: true`` also works for int and float)."""

    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @classmethod
    def parse(cls, key: str, raw: Any) -> Domain:
        where = f"space {key}"
        need(
            isinstance(raw, dict),
            f"{where} must be a mapping like {{choice: [1, 2, 4]}} or {{int: [1, 8]}}, got {raw!r}",
        )
        kinds = [k for k in raw if k in DOMAINS]
        extra = sorted(set(raw) - set(DOMAINS) - {"log"})
        need(
            not extra,
            f"{where} has unknown field {extra[0] if extra else ''!r}; "
            f"use one of {', '.join(DOMAINS)} (and log)",
        )
        need(len(kinds) == 1, f"{where} needs exactly one of {', '.join(DOMAINS)}")
        kind, body = kinds[0], raw[kinds[0]]
        log = raw.get("log", False)
        need(isinstance(log, bool), f"{where}: log must be true or false")
        if kind == "choice":
            need(
                isinstance(body, list) and len(body) > 0,
                f"{where}: choice must be a non-empty list",
            )
            need(not log, f"{where}: log does not apply to choice")
            ok = all(v is None or isinstance(v, (bool, int, float, str)) for v in body)
            need(ok, f"{where}: choice values must be numbers, strings or booleans")
            need(len(set(map(repr, body))) == len(body), f"{where}: choice has repeated values")
            return cls(key, kind, tuple(body))
        need(
            isinstance(body, list) and len(body) == 2 and all(is_num(v) for v in body),
            f"{where}: {kind} must be [low, high] numbers, got {body!r}",
        )
        low, high = body
        need(low < high, f"{where}: low {low} must be below high {high}")
        if kind == "int":
            need(is_int(low) and is_int(high), f"{where}: int bounds must be integers")
        if kind == "loguniform":
            kind, log = "float", True
        if log:
            need(low > 0, f"{where}: a log scale needs low > 0, got {low}")
        return cls(key, kind, (), low, high, log)

    def edges(self) -> tuple:
        """Values every trial config must accept: each choice, or both bounds."""
        return self.values if self.kind == "choice" else (self.low, self.high)

    def grid(self) -> tuple:
        """Every value, for an exhaustive search (choice and int domains only)."""
        if self.kind == "choice":
            return self.values
        if self.kind == "int" and not self.log:
            return tuple(range(int(self.low), int(self.high) + 1))
        raise SweepError(
            f"space {self.key}: search grid needs choice or int domains, not {self.kind}"
        )

    def optuna(self):
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            out["log"] = True
        return out
