"""Counters and timers the managers keep, and the Prometheus text format they are read in.

dockerd keeps its engine metrics in process-wide go-metrics objects; here each manager
owns its instruments (``ContainerManager.actions``, ``NetworkManager.actions``,
``HealthChecker.checks``), so two engines in one process (unit tests) never mix counts,
and ``engine.system.metrics`` reads them at scrape time. A timer is a Prometheus
histogram in seconds with the client library's default buckets, as go-metrics'
``NewLabeledTimer`` makes it; like dockerd, callers time only actions that succeeded.

``Exposition`` writes text format 0.0.4 (``# HELP``, ``# TYPE``, one sample a line). It
is a data format, not HTTP: the listener that serves it lives in ``api``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

# prometheus/client_golang's DefBuckets, which go-metrics timers use.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Counter:
    """A monotonically increasing count."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


@dataclass
class _Histogram:
    buckets: list[int]  # observations ≤ each bound (not cumulative; summed when written)
    total: float = 0.0
    count: int = 0


@dataclass
class LabeledTimer:
    """Durations by one label (``action``). ``preset`` values appear with zero counts
    before their first observation (dockerd pre-creates create/start/delete/...)."""

    label: str = "action"
    preset: tuple[str, ...] = ()
    bounds: tuple[float, ...] = DEFAULT_BUCKETS
    _series: dict[str, _Histogram] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value in self.preset:
            self._get(value)

    def _get(self, value: str) -> _Histogram:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = _Histogram([0] * len(self.bounds))
        return series

    def observe(self, value: str, seconds: float) -> None:
        series = self._get(value)
        series.count += 1
        series.total += seconds
        for index, bound in enumerate(self.bounds):
            if seconds <= bound:
                series.buckets[index] += 1
                break

    @contextlib.contextmanager
    def time(self, value: str) -> Iterator[None]:
        """Observe the block's duration if it returns normally (an error is not timed)."""
        started = time.monotonic()
        yield
        self.observe(value, time.monotonic() - started)

    def count(self, value: str) -> int:
        series = self._series.get(value)
        return series.count if series is not None else 0

    def items(self) -> list[tuple[str, _Histogram]]:
        return sorted(self._series.items())


class Timed(Protocol):
    @property
    def actions(self) -> LabeledTimer: ...


_S = TypeVar("_S", bound=Timed)
_P = ParamSpec("_P")
_R = TypeVar("_R")


_Method = Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]


def timed(action: str) -> Callable[[_Method[_S, _P, _R]], _Method[_S, _P, _R]]:
    """Decorate a manager's async method: its successful calls go into ``self.actions``
    under ``action``."""

    def decorate(method: _Method[_S, _P, _R]) -> _Method[_S, _P, _R]:
        async def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self.actions.time(action):
                return await method(self, *args, **kwargs)

        functools.update_wrapper(wrapper, method)
        return wrapper

    return decorate


# =========================================================================== text format
Labels = Mapping[str, str]


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def label_body(labels: Labels) -> str:
    """``a="1",b="2"``: the inside of a sample's braces (render once, reuse per family)."""
    return ",".join(f'{key}="{escape_label_value(value)}"' for key, value in labels.items())


def _label_text(labels: Labels) -> str:
    return "{" + label_body(labels) + "}" if labels else ""


class Exposition:
    """Builds one scrape's text. Families must be written whole, one after another."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Labels, value: float) -> None:
        self._lines.append(f"{name}{_label_text(labels)} {format_value(value)}")

    def samples_rendered(self, name: str, rows: Iterable[tuple[str, float]]) -> None:
        """Samples whose labels went through ``label_body`` already."""
        self._lines.extend(f"{name}{{{body}}} {format_value(value)}" for body, value in rows)

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self.family(name, "gauge", help_text)
        for labels, value in samples:
            self.sample(name, labels, value)

    def counter(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """``name`` ends in ``_total``, as the text format expects of counters."""
        self.family(name, "counter", help_text)
        for labels, value in samples:
            self.sample(name, labels, value)

    def histogram(self, name: str, help_text: str, timer: LabeledTimer) -> None:
        self.family(name, "histogram", help_text)
        for value, series in timer.items():
            cumulative = 0
            for bound, hits in zip(timer.bounds, series.buckets, strict=True):
                cumulative += hits
                le = f"{bound:g}"  # Go writes bounds as 0.005, 1, 2.5
                self.sample(f"{name}_bucket", {timer.label: value, "le": le}, cumulative)
            self.sample(f"{name}_bucket", {timer.label: value, "le": "+Inf"}, series.count)
            self.sample(f"{name}_sum", {timer.label: value}, series.total)
            self.sample(f"{name}_count", {timer.label: value}, series.count)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
