"""engine.reload: which keys a reload applies, keeps, resets and reports."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import EngineConfig
from engine.errors import InvalidParameter
from engine.reload import plan_reload, reload_attributes


def cfg(**values: Any) -> EngineConfig:
    return EngineConfig.model_validate(values)


def test_reloadable_changes_are_applied_and_named() -> None:
    running = cfg(labels=["a=1"], debug=False)
    loaded = cfg(labels=["a=2"], debug=True, **{"registry-mirrors": ["https://m"]})
    plan = plan_reload(running, loaded, {"labels", "debug", "registry-mirrors"})
    assert plan.changed == ("debug", "labels", "registry-mirrors")
    assert (plan.config.labels, plan.config.debug) == (["a=2"], True)
    assert plan.needs_restart == ()


def test_absent_keys_keep_their_value_except_the_transfer_limits() -> None:
    running = cfg(labels=["a=1"], **{"max-concurrent-downloads": 9, "shutdown-timeout": 3})
    plan = plan_reload(running, cfg(), set())
    assert plan.config.labels == ["a=1"] and plan.config.shutdown_timeout == 3
    assert plan.config.max_concurrent_downloads == 3  # dockerd resets it to the default
    assert plan.changed == ("max-concurrent-downloads",)


def test_other_keys_are_reported_not_applied() -> None:
    running = cfg()
    plan = plan_reload(running, cfg(mtu=1400, labels=["x=y"]), {"mtu", "labels"})
    assert plan.needs_restart == ("mtu",)
    assert plan.config.mtu == 1500 and plan.config.labels == ["x=y"]


def test_default_runtime_must_exist_after_the_merge() -> None:
    running = cfg(runtimes={"other": {"path": "/bin/true"}}, **{"default-runtime": "other"})
    # the file replaces the runtimes and says nothing of the default, which is kept
    loaded = cfg(runtimes={"third": {"path": "/bin/true"}})
    with pytest.raises(InvalidParameter, match="default runtime 'other' does not exist"):
        plan_reload(running, loaded, {"runtimes"})


def test_event_attributes_in_dockerd_format() -> None:
    config = cfg(labels=["a=b"], features={"z": True, "b": False},
                 runtimes={"x": {"path": "/x"}})
    attrs = reload_attributes(config, "host1")
    assert attrs["labels"] == '["a=b"]' and attrs["features"] == "map[b:false z:true]"
    assert attrs["runtimes"] == "crun:crun runc:runc x:/x"
    assert (attrs["debug"], attrs["live-restore"], attrs["name"]) == ("false", "true", "host1")
    assert attrs["insecure-registries"] == "[]"
