"""Restart policies: whether a container that stopped runs again, and after how long.

Docker's rules: `always` always restarts; `unless-stopped` unless the user stopped it;
`on-failure[:N]` on a non-zero exit while fewer than N restarts happened (N=0: no limit);
an explicit stop or kill cancels. The delay starts at 100 ms and doubles up to one
minute; a run that lasted 10 s or more resets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INITIAL_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0


def should_restart(
    policy: Mapping[str, Any], exit_code: int, restart_count: int, manually_stopped: bool
) -> bool:
    name = policy.get("Name") or "no"
    if manually_stopped or name == "no":
        return False
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        limit = int(policy.get("MaximumRetryCount") or 0)
        return exit_code != 0 and (limit == 0 or restart_count < limit)
    return False


def restart_on_daemon_start(
    policy: Mapping[str, Any], exit_code: int, restart_count: int, manually_stopped: bool
) -> bool:
    """dockerd starts `always` containers at daemon start even after a `docker stop`."""
    if (policy.get("Name") or "no") == "always":
        return True
    return should_restart(policy, exit_code, restart_count, manually_stopped)


def next_delay(previous: float | None, ran_for: float) -> float:
    if previous is None or ran_for >= RESET_AFTER:
        return INITIAL_DELAY
    return min(previous * 2, MAX_DELAY)
