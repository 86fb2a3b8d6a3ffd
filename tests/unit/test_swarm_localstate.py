"""engine.swarm.localstate: sealing the node key (autolock), the unlock key's format, the
files of a membership, and how the advertised address is chosen (wharfd-only, no daemon)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from engine.errors import InvalidParameter, Unauthorized
from engine.layout import Layout
from engine.swarm.localstate import (
    INVALID_UNLOCK_KEY,
    NO_SYSTEM_ADDRESS,
    LocalState,
    SwarmFiles,
    advertise_address,
    seal,
    split_host_port,
    unlock_key_bytes,
    unlock_key_fingerprint,
    unseal,
)


def _key() -> str:
    return "SWMKEY-1-" + base64.b64encode(os.urandom(32)).decode().rstrip("=")


def test_seal_round_trips_and_a_wrong_key_is_401() -> None:
    key = _key()
    sealed = seal(b"-----BEGIN PRIVATE KEY-----\nsecret\n", key)
    assert b"secret" not in sealed
    assert unseal(sealed, key) == b"-----BEGIN PRIVATE KEY-----\nsecret\n"
    with pytest.raises(Unauthorized) as wrong:
        unseal(sealed, _key())
    assert str(wrong.value) == INVALID_UNLOCK_KEY
    # each sealing uses a fresh nonce
    assert seal(b"x", key) != seal(b"x", key)


@pytest.mark.parametrize("text", ["", "SWMKEY-1-", "SWMKEY-2-" + "A" * 43, "SWMKEY-1-!!",
                                  "SWMKEY-1-" + base64.b64encode(b"short").decode()])
def test_malformed_unlock_keys_are_401(text: str) -> None:
    with pytest.raises(Unauthorized, match="invalid key provided"):
        unlock_key_bytes(text)


def test_unlock_key_fingerprint_tells_keys_apart_and_empty_is_empty() -> None:
    a, b = _key(), _key()
    assert unlock_key_fingerprint(a) != unlock_key_fingerprint(b)
    assert unlock_key_fingerprint(a) == unlock_key_fingerprint(a)
    assert unlock_key_fingerprint("") == ""


def test_files_seal_on_disk_and_keep_a_plain_live_copy(tmp_path: Path) -> None:
    files = SwarmFiles(Layout(data_root=tmp_path / "data", exec_root=tmp_path / "exec"))
    key = _key()
    files.save_certificates(b"CA", b"CERT", b"PLAIN-KEY", key)
    assert files.key_is_sealed()
    assert files.live_node_key.read_bytes() == b"PLAIN-KEY"
    files.drop_live_key()
    with pytest.raises(Unauthorized):
        files.unseal(_key())
    files.unseal(key)
    assert files.live_node_key.read_bytes() == b"PLAIN-KEY"
    files.reseal("")  # autolock off: plain on disk again
    assert not files.key_is_sealed()
    assert files.node_key.read_bytes() == b"PLAIN-KEY"

    state = LocalState(node_id="n", cluster_id="c", role="manager",
                       listen_addr="0.0.0.0:2377", advertise_addr="10.0.0.1", cluster_port=2377)
    files.save_state(state)
    assert files.load_state() == state
    assert state.manager_addr == "10.0.0.1:2377"
    files.remove_all()
    assert files.load_state() is None
    assert not files.live_node_key.exists()


def test_advertise_address_choices() -> None:
    assert advertise_address("192.168.77.1", "0.0.0.0", 2377) == ("192.168.77.1", 2377)
    assert advertise_address("192.168.77.1:4000", "0.0.0.0", 2377) == ("192.168.77.1", 4000)
    assert advertise_address("", "10.1.2.3", 2377) == ("10.1.2.3", 2377)
    assert advertise_address("lo", "0.0.0.0", 2377) == ("127.0.0.1", 2377)
    # towards a manager: the address of the route to it
    assert advertise_address("", "0.0.0.0", 2377, towards="127.0.0.1") == ("127.0.0.1", 2377)
    with pytest.raises(InvalidParameter, match="advertise address must be"):
        advertise_address("no-such-interface0", "0.0.0.0", 2377)
    assert NO_SYSTEM_ADDRESS == "could not find the system's IP address"


def test_split_host_port() -> None:
    assert split_host_port("0.0.0.0:2377") == ("0.0.0.0", 2377)
    assert split_host_port("[::1]:2377") == ("::1", 2377)
    with pytest.raises(InvalidParameter):
        split_host_port("nohost")
