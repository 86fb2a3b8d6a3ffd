"""Mount planning (engine/volumes/mounts.py): every -v / --mount / --tmpfs / VOLUME /
--volumes-from form, dockerd's precedence, the OCI and inspect shapes, and the B12
messages (reliability.md) word for word."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidParameter, NotFound, NotSupported
from engine.volumes import local
from engine.volumes.mounts import (
    MountPlan,
    inspect_mount,
    merge_tmpfs_options,
    oci_mount,
    parse_bind,
    parse_volumes_from,
    plan_mounts,
    plans_from_json,
    tmpfs_options,
    valid_mode,
)

INVALID_NAME = (
    '"{name}" includes invalid characters for a local volume name, only '
    '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
    "use absolute path"
)


def plan(
    binds: Sequence[str] = (),
    mounts: Sequence[dict[str, Any]] = (),
    tmpfs: dict[str, str] | None = None,
    volumes: Sequence[str] = (),
    image_volumes: Sequence[str] = (),
    volumes_from: Sequence[str] = (),
    others: dict[str, list[MountPlan]] | None = None,
    existing: Sequence[str] = ("/exists",),
    volume_driver: str = "",
) -> list[MountPlan]:
    host: dict[str, Any] = {"Binds": list(binds) or None, "Mounts": list(mounts) or None,
                            "Tmpfs": tmpfs, "VolumesFrom": list(volumes_from) or None}
    if volume_driver:
        host["VolumeDriver"] = volume_driver

    def lookup(ref: str) -> list[MountPlan]:
        if others is None or ref not in others:
            raise NotFound(f"No such container: {ref}")
        return others[ref]

    return plan_mounts(
        {"Volumes": {v: {} for v in volumes} or None},
        host,
        {"Volumes": {v: {} for v in image_volumes} or None},
        lookup,
        lambda path: path in existing,
    )


def error_of(**kwargs: Any) -> str:
    with pytest.raises(InvalidParameter) as info:
        plan(**kwargs)
    return info.value.message


def by_dest(plans: list[MountPlan]) -> dict[str, MountPlan]:
    return {p.destination: p for p in plans}


# ------------------------------------------------------------------ -v (Binds)
def test_named_volume_bind() -> None:
    p = parse_bind("mysql:/var/lib/mysql")
    assert (p.type, p.source, p.destination, p.origin) == ("volume", "mysql", "/var/lib/mysql",
                                                            "binds")
    assert not p.read_only and p.copy_data and not p.anonymous and p.mode == ""
    assert p.propagation == ""


@pytest.mark.parametrize(("raw", "read_only", "copy"), [
    ("v1:/data:ro", True, True),
    ("v1:/data:rw", False, True),
    ("v1:/data:nocopy", False, False),
    ("v1:/data:ro,nocopy", True, False),
    ("v1:/data:z", False, True),
    ("v1:/data:Z,ro", True, True),
    ("v1:/data:cached", False, True),
])
def test_named_volume_modes(raw: str, read_only: bool, copy: bool) -> None:
    p = parse_bind(raw)
    assert p.read_only is read_only and p.copy_data is copy
    assert p.mode == raw.split(":", 2)[2]


def test_host_bind_forms() -> None:
    p = parse_bind("/tmp:/hosttmp:ro")
    assert (p.type, p.source, p.destination, p.read_only) == ("bind", "/tmp", "/hosttmp", True)
    assert p.propagation == "rprivate" and p.mode == "ro" and p.create_source
    p = parse_bind("/srv/www/:/www/")
    assert (p.source, p.destination, p.read_only, p.mode) == ("/srv/www", "/www", False, "")
    p = parse_bind("/a:/b:rshared")
    assert p.propagation == "rshared"
    p = parse_bind("/a:/b:ro,rslave,z")
    assert p.propagation == "rslave" and p.read_only


def test_anonymous_bind_entry() -> None:
    p = parse_bind("/data")
    assert (p.type, p.source, p.destination, p.anonymous, p.copy_data) == (
        "volume", "", "/data", True, True)


@pytest.mark.parametrize(("raw", "message"), [
    ("", "invalid volume specification: ''"),
    (":/x", "invalid volume specification: ':/x'"),
    ("/foo:rw", "invalid volume specification: '/foo:rw'"),
    ("a:/b:c:d", "invalid volume specification: 'a:/b:c:d'"),
    ("v:/x:bogus", "invalid mode: bogus"),
    ("v:/x:ro,rw", "invalid mode: ro,rw"),
    ("v:/x:z,Z", "invalid mode: z,Z"),
    ("v:relative", "invalid volume specification: 'v:relative': invalid mount config for type "
                   "\"volume\": invalid mount path: 'relative' mount path must be absolute"),
    ("/h:/", "invalid volume specification: '/h:/': invalid mount config for type \"bind\": "
             "invalid specification: destination can't be '/'"),
    ("v:/x:rshared", "invalid volume specification: 'v:/x:rshared': invalid mount config for "
                     "type \"volume\": field BindOptions must not be specified"),
    ("/h:/x:nocopy", "invalid volume specification: '/h:/x:nocopy': invalid mount config for "
                     "type \"bind\": field VolumeOptions must not be specified"),
])
def test_bind_errors(raw: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_bind(raw)
    assert info.value.message == message


def test_b12_relative_bind_is_a_bad_volume_name() -> None:
    assert error_of(binds=["relative/path:/x"]) == (
        "create relative/path: " + INVALID_NAME.format(name="relative/path"))
    assert error_of(binds=["a/b:/x"]) == "create a/b: " + INVALID_NAME.format(name="a/b")
    assert error_of(binds=["x:/y"]) == (
        "create x: volume name is too short, names should be at least two alphanumeric "
        "characters")


@pytest.mark.parametrize("name", [".", "..", "../x", "-a", "_a", ".hidden", "a b", "a\\b",
                                  "a/../b", "é1"])
def test_escaping_volume_names_refused(name: str) -> None:
    assert local.name_problem(name) is not None


@given(st.text(min_size=1, max_size=20))
def test_valid_names_never_escape(name: str) -> None:
    if local.name_problem(name) is None:
        assert "/" not in name and name not in (".", "..") and not name.startswith(".")
        assert "\x00" not in name


def test_missing_host_dir_is_fine_for_v() -> None:
    plans = plan(binds=["/does/not/exist:/www"], existing=())
    assert plans[0].type == "bind" and plans[0].create_source


# ------------------------------------------------------------------ --mount (Mounts)
def test_mount_bind() -> None:
    p = plan(mounts=[{"Type": "bind", "Source": "/exists", "Target": "/x", "ReadOnly": True,
                      "BindOptions": {"Propagation": "rslave"}}])[0]
    assert (p.type, p.source, p.destination, p.read_only, p.propagation, p.origin) == (
        "bind", "/exists", "/x", True, "rslave", "mounts")
    assert not p.create_source and p.mode == ""
    p = plan(mounts=[{"Type": "bind", "Source": "/exists", "Target": "/x",
                      "BindOptions": {"NonRecursive": True}}])[0]
    assert p.propagation == "rprivate" and p.non_recursive


def test_b12_missing_bind_source_for_mount() -> None:
    assert error_of(mounts=[{"Type": "bind", "Source": "/nonexistent/dir", "Target": "/x"}]) == (
        'invalid mount config for type "bind": bind source path does not exist: '
        "/nonexistent/dir")
    # CreateMountpoint lifts it
    p = plan(mounts=[{"Type": "bind", "Source": "/nope", "Target": "/x",
                      "BindOptions": {"CreateMountpoint": True}}])[0]
    assert p.create_source


def test_mount_volume() -> None:
    p = plan(mounts=[{"Type": "volume", "Source": "data1", "Target": "/data",
                      "VolumeOptions": {"NoCopy": True, "Labels": {"a": "b"},
                                        "DriverConfig": {"Name": "local",
                                                         "Options": {"type": "tmpfs"}}}}])[0]
    assert (p.type, p.source, p.copy_data, p.driver) == ("volume", "data1", False, "local")
    assert p.labels == {"a": "b"} and p.driver_opts == {"type": "tmpfs"}
    p = plan(mounts=[{"Type": "volume", "Target": "/anon"}])[0]
    assert p.anonymous and p.source == "" and p.copy_data


def test_mount_tmpfs() -> None:
    p = plan(mounts=[{"Type": "tmpfs", "Target": "/scratch",
                      "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777}}])[0]
    assert (p.type, p.tmpfs_data, p.origin) == ("tmpfs", "mode=1777,size=1m", "mounts")
    p = plan(mounts=[{"Type": "tmpfs", "Target": "/s", "ReadOnly": True,
                      "TmpfsOptions": {"SizeBytes": 1000, "Options": [["exec"]]}}])[0]
    assert p.tmpfs_data == "ro,size=1000,exec"
    p = plan(mounts=[{"Type": "tmpfs", "Target": "/s", "TmpfsOptions": {"SizeBytes": 3 << 30}}])[0]
    assert p.tmpfs_data == "size=3g"


@pytest.mark.parametrize(("cfg", "message"), [
    ({"Type": "weird", "Target": "/x"}, 'invalid mount config for type "weird": mount type '
                                        "unknown"),
    ({"Type": "npipe", "Source": "x", "Target": "/x"},
     'invalid mount config for type "npipe": mount type unknown'),
    ({"Type": "bind", "Source": "/exists", "Target": "relative"},
     "invalid mount config for type \"bind\": invalid mount path: 'relative' mount path must "
     "be absolute"),
    ({"Type": "volume", "Target": "relative"},
     "invalid mount config for type \"volume\": invalid mount path: 'relative' mount path "
     "must be absolute"),
    ({"Type": "volume", "Source": "v1"}, 'invalid mount config for type "volume": field Target '
                                         "must not be empty"),
    ({"Type": "bind", "Target": "/x"}, 'invalid mount config for type "bind": field Source must '
                                       "not be empty"),
    ({"Type": "bind", "Source": "rel", "Target": "/x"},
     "invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be "
     "absolute"),
    ({"Type": "bind", "Source": "/exists", "Target": "/"},
     'invalid mount config for type "bind": invalid specification: destination can\'t be \'/\''),
    ({"Type": "tmpfs", "Source": "x", "Target": "/x"},
     'invalid mount config for type "tmpfs": field Source must not be specified'),
    ({"Type": "volume", "Target": "/x", "BindOptions": {}},
     'invalid mount config for type "volume": field BindOptions must not be specified'),
    ({"Type": "bind", "Source": "/exists", "Target": "/x", "VolumeOptions": {"NoCopy": True}},
     'invalid mount config for type "bind": field VolumeOptions must not be specified'),
    ({"Type": "volume", "Target": "/x", "TmpfsOptions": {}},
     'invalid mount config for type "volume": field TmpfsOptions must not be specified'),
    ({"Type": "bind", "Source": "/exists", "Target": "/x",
      "BindOptions": {"Propagation": "sideways"}},
     'invalid mount config for type "bind": invalid propagation mode: sideways'),
    ({"Type": "volume", "Target": "/x", "VolumeOptions": {"Subpath": "a"}},
     'invalid mount config for type "volume": must not set Subpath when using anonymous '
     "volumes"),
    ({"Type": "volume", "Source": "v1", "Target": "/x", "VolumeOptions": {"Subpath": "../a"}},
     'invalid mount config for type "volume": subpath must be a relative path within the '
     "volume"),
    ({"Type": "tmpfs", "Target": "/x", "TmpfsOptions": {"Options": [["suid"]]}},
     'invalid mount config for type "tmpfs": invalid option: suid'),
    ({"Type": "volume", "Source": "a/b", "Target": "/x"},
     "create a/b: " + INVALID_NAME.format(name="a/b")),
])
def test_mount_errors(cfg: dict[str, Any], message: str) -> None:
    assert error_of(mounts=[cfg]) == message


def test_mount_subpath_is_planned_without_copy_up() -> None:
    (got,) = plan(mounts=[{"Type": "volume", "Source": "v1", "Target": "/x",
                           "VolumeOptions": {"Subpath": "a/b"}}])
    assert got.subpath == "a/b" and got.source == "v1" and not got.copy_data


def test_mount_image_not_supported() -> None:
    with pytest.raises(NotSupported):
        plan(mounts=[{"Type": "image", "Source": "busybox", "Target": "/x"}])


# ------------------------------------------------------------------ duplicates, precedence
def test_b12_duplicate_mount_point() -> None:
    assert error_of(binds=["v1:/x", "v2:/x"]) == "Duplicate mount point: /x"
    assert error_of(binds=["v1:/x/", "/exists:/x"]) == "Duplicate mount point: /x"
    assert error_of(binds=["v1:/x"], mounts=[{"Type": "volume", "Target": "/x/"}]) == (
        "Duplicate mount point: /x/")
    assert error_of(mounts=[{"Type": "volume", "Target": "/x"},
                            {"Type": "tmpfs", "Target": "/x"}]) == "Duplicate mount point: /x"
    assert error_of(binds=["v1:/run"], tmpfs={"/run": ""}) == "Duplicate mount point: /run"


def test_tmpfs_wins_over_mounts_and_volumes_from() -> None:
    other = [MountPlan(type="volume", destination="/run", origin="binds", source="vv")]
    plans = by_dest(plan(mounts=[{"Type": "volume", "Target": "/cache"}],
                         tmpfs={"/cache": "size=1m", "/run": ""}, volumes_from=["c1"],
                         others={"c1": other}))
    assert plans["/cache"].type == "tmpfs" and plans["/run"].type == "tmpfs"
    assert plans["/cache"].tmpfs_data == "size=1m"


def test_binds_override_volumes_from() -> None:
    other = [MountPlan(type="volume", destination="/data", origin="binds", source="theirs")]
    plans = by_dest(plan(binds=["mine:/data"], volumes_from=["c1"], others={"c1": other}))
    assert plans["/data"].source == "mine" and plans["/data"].origin == "binds"


def test_volumes_from() -> None:
    other = [
        MountPlan(type="volume", destination="/data", origin="binds", source="v1",
                  mode="z", copy_data=True),
        MountPlan(type="volume", destination="/anon", origin="config", source="f" * 64,
                  anonymous=True, copy_data=True),
        MountPlan(type="bind", destination="/h", origin="binds", source="/tmp",
                  read_only=True, propagation="rprivate", mode="ro"),
        MountPlan(type="tmpfs", destination="/run", origin="tmpfs"),
    ]
    plans = by_dest(plan(volumes_from=["c1"], others={"c1": other}))
    assert set(plans) == {"/data", "/anon", "/h"}  # --tmpfs is not inherited
    assert all(p.origin == "volumes-from" and not p.copy_data and p.mode == ""
               for p in plans.values())
    assert plans["/data"].source == "v1" and not plans["/data"].read_only
    assert plans["/anon"].anonymous and plans["/h"].read_only
    ro = by_dest(plan(volumes_from=["c1:ro"], others={"c1": other}))
    assert all(p.read_only for p in ro.values())


@pytest.mark.parametrize(("spec", "message"), [
    ("", "volumes-from specification cannot be an empty string"),
    ("c1:bogus", "invalid mode: bogus"),
    ("c1:rshared", "invalid mode: rshared"),
    ("c1:nocopy", "invalid mode: nocopy"),
])
def test_volumes_from_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_volumes_from(spec)
    assert info.value.message == message


def test_volumes_from_unknown_container() -> None:
    with pytest.raises(NotFound, match="No such container: ghost"):
        plan(volumes_from=["ghost"], others={})


# ------------------------------------------------------------------ --tmpfs, Config.Volumes
def test_tmpfs_map() -> None:
    p = plan(tmpfs={"/run": "size=1m", "/tmp/": ""})
    plans = by_dest(p)
    assert plans["/run"].tmpfs_data == "size=1m" and plans["/run"].origin == "tmpfs"
    assert not plans["/run"].listed and "/tmp" in plans


@pytest.mark.parametrize(("tmpfs", "message"), [
    ({"relative": ""}, "invalid mount path: 'relative' mount path must be absolute"),
    ({"/": ""}, "invalid specification: destination can't be '/'"),
    ({"/run": "size=1m,bogus"}, 'invalid tmpfs option "bogus"'),
    ({"/run": "foo=bar"}, 'invalid tmpfs option "foo"'),
])
def test_tmpfs_errors(tmpfs: dict[str, str], message: str) -> None:
    assert error_of(tmpfs=tmpfs) == message


def test_anonymous_volumes_from_config_and_image() -> None:
    plans = by_dest(plan(volumes=["/data"], image_volumes=["/var/lib/mysql", "/data/"]))
    assert set(plans) == {"/data", "/var/lib/mysql"}
    assert all(p.type == "volume" and p.anonymous and p.copy_data and p.origin == "config"
               and p.source == "" for p in plans.values())


def test_config_volumes_skip_what_is_mounted() -> None:
    plans = by_dest(plan(binds=["named:/var/lib/mysql"], tmpfs={"/run": ""},
                         volumes=["/run"], image_volumes=["/var/lib/mysql"]))
    assert plans["/var/lib/mysql"].source == "named"
    assert plans["/run"].type == "tmpfs"


def test_b12_relative_volume_target() -> None:
    assert error_of(volumes=["relative"]) == (
        "invalid mount path: 'relative' mount path must be absolute")


def test_volume_driver_is_carried() -> None:
    plans = by_dest(plan(binds=["v1:/a", "/exists:/h"], volumes=["/b"], volume_driver="other"))
    assert plans["/a"].driver == "other" and plans["/b"].driver == "other"


def test_plans_round_trip_json() -> None:
    plans = plan(binds=["v1:/a:ro", "/exists:/h"], tmpfs={"/run": "size=1m"},
                 mounts=[{"Type": "volume", "Source": "v2", "Target": "/v",
                          "VolumeOptions": {"Labels": {"x": "y"}}}])
    again = plans_from_json([p.to_json() for p in plans])
    assert list(again) == plans
    assert [p.labels for p in again if p.labels] == [{"x": "y"}]


# ------------------------------------------------------------------ outputs
def test_oci_mounts_as_dockerd_writes_them() -> None:
    vol = MountPlan(type="volume", destination="/data", origin="binds", source="v1")
    assert oci_mount(vol, "/var/lib/wharfd/volumes/v1/_data") == {
        "destination": "/data", "type": "bind", "source": "/var/lib/wharfd/volumes/v1/_data",
        "options": ["rbind"]}
    ro = parse_bind("/tmp:/hosttmp:ro")
    assert oci_mount(ro, ro.source)["options"] == ["rbind", "ro", "rprivate"]
    nr = MountPlan(type="bind", destination="/x", origin="mounts", source="/s",
                   non_recursive=True, propagation="rprivate")
    assert oci_mount(nr, "/s")["options"] == ["bind", "rprivate"]
    tmp = plan(tmpfs={"/run": "size=1m"})[0]
    assert oci_mount(tmp, "tmpfs") == {
        "destination": "/run", "type": "tmpfs", "source": "tmpfs",
        "options": ["noexec", "nosuid", "nodev", "rprivate", "size=1m"]}


def test_tmpfs_option_merge() -> None:
    assert tmpfs_options("") == ["noexec", "nosuid", "nodev", "rprivate"]
    assert tmpfs_options("exec,size=1m,mode=1777") == [
        "nosuid", "nodev", "rprivate", "exec", "size=1m", "mode=1777"]
    assert tmpfs_options("size=1m,size=2m,ro,rw") == [
        "noexec", "nosuid", "nodev", "rprivate", "size=2m", "rw"]
    assert merge_tmpfs_options(["defaults", "rshared", "rprivate"]) == ["rprivate"]


def test_inspect_shapes() -> None:
    vol = MountPlan(type="volume", destination="/data", origin="binds", source="capvol3",
                    mode="z", driver="local")
    assert inspect_mount(vol, "/root/volumes/capvol3/_data") == {
        "Type": "volume", "Name": "capvol3", "Source": "/root/volumes/capvol3/_data",
        "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""}
    bind = parse_bind("/tmp:/hosttmp:ro")
    assert inspect_mount(bind, "/tmp") == {
        "Type": "bind", "Source": "/tmp", "Destination": "/hosttmp", "Mode": "ro", "RW": False,
        "Propagation": "rprivate"}
    tmp = plan(mounts=[{"Type": "tmpfs", "Target": "/scratch"}])[0]
    assert inspect_mount(tmp, "") == {
        "Type": "tmpfs", "Source": "", "Destination": "/scratch", "Mode": "", "RW": True,
        "Propagation": ""}


@pytest.mark.parametrize(("mode", "ok"), [
    ("", True), ("ro", True), ("rw,z", True), ("ro,Z,rshared,nocopy,delegated", True),
    ("ro,ro", False), ("shared,slave", False), ("x", False), ("nocopy,nocopy", False),
])
def test_valid_mode(mode: str, ok: bool) -> None:
    assert valid_mode(mode) is ok


@given(st.text(max_size=40))
def test_parse_bind_never_crashes(raw: str) -> None:
    try:
        parse_bind(raw)
    except InvalidParameter:
        pass
