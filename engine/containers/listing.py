"""`docker ps` selection: the `all`, `limit`, `before`, `since` and filter rules of dockerd."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from engine.containers.model import ContainerView
from engine.containers.state import Status
from engine.errors import EngineError, InvalidParameter, NotFound

log = logging.getLogger(__name__)

_STATUSES = {s.value for s in Status}


def select(
    views: Iterable[ContainerView],
    *,
    all_: bool,
    limit: int | None,
    filters: Mapping[str, list[str]],
    image_matches: Mapping[str, set[str]] | None = None,
    also: Callable[[ContainerView], bool] | None = None,
) -> list[ContainerView]:
    """Newest first, like dockerd. ``image_matches`` maps an ancestor filter value to the
    image ids it names (resolved by the caller, which knows images)."""
    ordered = sorted(views, key=lambda v: v.config.created, reverse=True)
    by_ref = {v.id: v for v in ordered}
    before = _boundary(filters.get("before"), ordered, by_ref)
    since = _boundary(filters.get("since"), ordered, by_ref)
    for status in filters.get("status", []):
        if status not in _STATUSES:
            raise InvalidParameter(f"invalid filter 'status={status}'")
    show_all = all_ or bool(filters.get("status")) or bool(filters.get("exited"))
    show_all = show_all or (limit is not None and limit > 0)
    show_all = show_all or before is not None or since is not None
    result = []
    for view in ordered:
        if before is not None and view.config.created >= before.config.created:
            continue
        if since is not None and view.config.created <= since.config.created:
            continue
        if not show_all and not (view.running or view.state.status == Status.RESTARTING):
            continue
        if _selected(view, filters, image_matches or {}, also):
            result.append(view)
    if limit is not None and limit > 0:
        result = result[:limit]
    return result


def _selected(
    view: ContainerView, filters: Mapping[str, list[str]], images: Mapping[str, set[str]],
    also: Callable[[ContainerView], bool] | None,
) -> bool:
    """Whether the filters keep ``view``. A record too damaged to be judged is left out
    (and logged) rather than failing the whole listing; a bad filter is still an error."""
    try:
        return _passes(view, filters, images) and (also is None or also(view))
    except EngineError:
        raise
    except Exception as exc:  # one damaged record must not take the listing down
        log.warning("listing containers: left out container %s: %s: %s", view.id,
                    type(exc).__name__, exc)
        return False


def _boundary(
    refs: list[str] | None, ordered: list[ContainerView], by_id: dict[str, ContainerView]
) -> ContainerView | None:
    if not refs:
        return None
    ref = refs[0]
    for view in ordered:
        if view.id == ref or view.name == ref.lstrip("/") or view.id.startswith(ref):
            return view
    raise NotFound(f"No such container: {ref}")


def _passes(
    view: ContainerView, filters: Mapping[str, list[str]], images: Mapping[str, set[str]]
) -> bool:
    for key, wanted in filters.items():
        if not wanted or key in ("before", "since"):
            continue
        if key == "id" and not any(view.id.startswith(w) for w in wanted):
            return False
        if key == "name" and not any(_name_matches(view.name, w) for w in wanted):
            return False
        if key == "label" and not _labels_match(view.config.labels, wanted):
            return False
        if key == "status" and view.state.status.value not in wanted:
            return False
        if key == "health":
            health = view.state.health
            status = health.get("Status") if health else "none"
            if status not in wanted:
                return False
        if key == "exited":
            if view.state.status != Status.EXITED:
                return False
            if not any(str(view.state.exit_code) == w for w in wanted):
                return False
        if key == "ancestor":
            ids = set().union(*(images.get(w, set()) for w in wanted))
            if view.config.image_id not in ids and view.config.image_ref not in wanted:
                return False
    return True


def _name_matches(name: str, pattern: str) -> bool:
    try:
        return re.search(pattern.lstrip("/"), name) is not None or re.search(
            pattern, "/" + name
        ) is not None
    except re.error:
        return False


def _labels_match(labels: Mapping[str, str], wanted: list[str]) -> bool:
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def parse_until(values: list[str] | None) -> float | None:
    """`until` of prune filters: a unix timestamp, RFC 3339, or a Go duration ago."""
    if not values:
        return None
    value = values[0].strip()
    try:
        return float(value)
    except ValueError:
        pass
    seconds = _go_duration(value)
    if seconds is not None:
        return time.time() - seconds
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidParameter(f"failed to parse value {value!r} of until filter") from None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def _go_duration(text: str) -> float | None:
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def prune_matches(
    view: ContainerView, filters: Mapping[str, list[str]], until: float | None
) -> bool:
    if until is not None:
        created = datetime.fromisoformat(view.config.created[:26] + "+00:00").timestamp()
        if created >= until:
            return False
    labels = view.config.labels
    if filters.get("label") and not _labels_match(labels, filters["label"]):
        return False
    for negated in filters.get("label!", []):
        if _labels_match(labels, [negated]):
            return False
    return True
