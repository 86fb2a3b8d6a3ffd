"""Restart policy decisions and backoff (reliability.md A2, F18)."""

from __future__ import annotations

import pytest

from engine.containers.restart import (
    INITIAL_DELAY,
    MAX_DELAY,
    next_delay,
    restart_on_daemon_start,
    should_restart,
)


@pytest.mark.parametrize(
    ("policy", "code", "count", "stopped", "expected"),
    [
        ({"Name": "no"}, 1, 0, False, False),
        ({"Name": "always"}, 0, 5, False, True),
        ({"Name": "always"}, 0, 0, True, False),
        ({"Name": "unless-stopped"}, 0, 0, False, True),
        ({"Name": "unless-stopped"}, 1, 0, True, False),
        ({"Name": "on-failure"}, 0, 0, False, False),
        ({"Name": "on-failure"}, 3, 100, False, True),
        ({"Name": "on-failure", "MaximumRetryCount": 3}, 3, 2, False, True),
        ({"Name": "on-failure", "MaximumRetryCount": 3}, 3, 3, False, False),
    ],
)
def test_should_restart(
    policy: dict[str, object], code: int, count: int, stopped: bool, expected: bool
) -> None:
    assert should_restart(policy, code, count, stopped) is expected


def test_always_starts_with_the_daemon_even_after_stop() -> None:
    assert restart_on_daemon_start({"Name": "always"}, 0, 0, True)
    assert not restart_on_daemon_start({"Name": "unless-stopped"}, 0, 0, True)


def test_backoff_doubles_caps_and_resets() -> None:
    delay = next_delay(None, 0.0)
    assert delay == INITIAL_DELAY
    seen = [delay]
    for _ in range(12):
        delay = next_delay(delay, 0.5)
        seen.append(delay)
    assert seen[:4] == [0.1, 0.2, 0.4, 0.8]
    assert seen[-1] == MAX_DELAY
    assert next_delay(MAX_DELAY, 10.0) == INITIAL_DELAY
