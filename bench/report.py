"""Results of runs, their medians and spreads, and Markdown tables of them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Run:
    """One timed load of ``events`` rows by one method."""

    method: str
    events: int
    seconds: float
    client_cpu: float  # the shipper, psql, or the Python client standing in for the seed's PHP
    server_cpu: float | None  # every PostgreSQL process; None when the server is not on this machine
    machine_busy: float  # CPU seconds the whole machine used (all cores, everyone's)
    peak_rss_kib: int = 0
    load: str = ""  # load average when the run ended
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def others(self) -> float:
        """Cores used by processes other than client and server during the run (other people's work)."""
        return max(0.0, self.machine_busy - self.client_cpu - (self.server_cpu or 0.0)) / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "others": self.others}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """min-max around the median, in percent of it."""
    mid = median(values)
    if not mid or len(values) < 2:
        return "-"
    return f"{(min(values) - mid) / mid * 100:+.0f}% / {(max(values) - mid) / mid * 100:+.0f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def by_method(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.method, []).append(run)
    return out


def _med(runs: Sequence[Run], get: Callable[[Run], float | None]) -> float | None:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return median(values) if values else None


def catchup_table(runs: Sequence[Run]) -> str:
    rows = []
    for method, group in by_method(runs).items():
        rates = [r.rate for r in group]
        per_event = _med(group, lambda r: (r.client_cpu + (r.server_cpu or 0)) / r.events * 1e6)
        rows.append([
            method, f"{group[0].events:,}", len(group), f"**{median(rates):,.0f}**", spread(rates),
            fmt(_med(group, lambda r: r.seconds), ".1f"),
            fmt(_med(group, lambda r: r.client_cpu), ".1f"),
            fmt(_med(group, lambda r: r.server_cpu), ".1f"),
            fmt(per_event, ".1f"),
            fmt(_med(group, lambda r: r.peak_rss_kib / 1024 if r.peak_rss_kib else None), ".0f"),
            fmt(_med(group, lambda r: r.others), ".2f"),
        ])
    return table(["method", "events", "runs", "events/s (median)", "spread (min / max)", "wall s",
                  "client CPU s", "server CPU s", "CPU µs/event (both)", "client peak RSS MB",
                  "others' load (cores)"], rows)


def ratios(runs: Sequence[Run], shipper: str, against: Sequence[str]) -> list[tuple[str, float]]:
    groups = by_method(runs)
    if shipper not in groups:
        return []
    mine = median([r.rate for r in groups[shipper]])
    return [(name, mine / median([r.rate for r in groups[name]])) for name in against if name in groups]
