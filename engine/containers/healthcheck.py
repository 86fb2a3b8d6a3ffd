"""What a container's ``Healthcheck`` config asks for (used by the manager and the
checker in ``health.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def probe_command(healthcheck: Mapping[str, Any] | None) -> list[str] | None:
    """The argv of the probe, or None when there is no (or a disabled) healthcheck."""
    if not healthcheck:
        return None
    test = list(healthcheck.get("Test") or [])
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return test[1:] or None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])] if len(test) > 1 else None
    return test
