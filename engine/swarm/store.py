"""Typed swarm documents in etcd, under ``/wharfd/swarm/`` (docs/swarm.md, "Keys in etcd").

A document is a pydantic model stored as JSON without its ``Version``; the version a reader
sees is the key's ``mod_revision``, a store-wide counter exactly like swarmkit's raft index
(swarm-api-notes §0.2). Every write of an existing document compares the revision it was
read at, so a stale ``?version=`` or a lost race between two writers fails with dockerd's
500 ``rpc error: code = Unknown desc = update out of sequence``. Internal writers (the
leader marking nodes down, role changes) use :meth:`SwarmStore.modify`, which retries
from a fresh read instead of overwriting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from engine.errors import Conflict, EngineError, NotFound
from engine.swarm.etcd import EtcdClient, KeyValue, OutOfSequence

PREFIX = "/wharfd/swarm/"
CLUSTER_KEY = PREFIX + "cluster"
SECRETS_KEY = PREFIX + "cluster-secrets"
NODES_PREFIX = PREFIX + "nodes/"
ALIVE_PREFIX = PREFIX + "alive/"
LEADER_KEY = PREFIX + "leader"

OUT_OF_SEQUENCE = "rpc error: code = Unknown desc = update out of sequence"

# Internal writers retry a lost compare-and-swap this many times before giving up: each
# retry starts from a fresh read, so only a storm of concurrent writers exhausts it.
MODIFY_ATTEMPTS = 20

M = TypeVar("M", bound=BaseModel)


class UpdateOutOfSequence(EngineError):
    """A write compared a revision that is no longer the document's (HTTP 500, dockerd's
    text kept whole: docker-py retries on a message ending in ``update out of sequence``)."""

    def __init__(self) -> None:
        super().__init__(OUT_OF_SEQUENCE)


def node_key(node_id: str) -> str:
    return NODES_PREFIX + node_id


def alive_key(node_id: str) -> str:
    return ALIVE_PREFIX + node_id


def node_id_of_key(key: str, prefix: str) -> str:
    return key[len(prefix):]


@dataclass(frozen=True)
class Stored(Generic[M]):
    """A document and the revision it was read at (its ``Version.Index``)."""

    doc: M
    version: int


def encode(doc: BaseModel) -> bytes:
    """The stored form: the document's JSON without ``Version`` (the key's revision is)."""
    return json.dumps(
        doc.model_dump(mode="json", exclude={"Version"}), separators=(",", ":")
    ).encode()


def decode(model: type[M], kv: KeyValue) -> Stored[M]:
    data: dict[str, Any] = json.loads(kv.value)
    if "Version" in model.model_fields:
        data["Version"] = {"Index": kv.mod_revision}
    return Stored(model.model_validate(data), kv.mod_revision)


class SwarmStore:
    """The swarm's documents over one :class:`EtcdClient` (which the caller owns)."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client

    async def read(self, key: str, model: type[M]) -> Stored[M] | None:
        kv = await self.client.get(key)
        return decode(model, kv) if kv is not None else None

    async def read_required(self, key: str, model: type[M], missing: str) -> Stored[M]:
        stored = await self.read(key, model)
        if stored is None:
            raise NotFound(missing)
        return stored

    async def read_prefix(self, prefix: str, model: type[M]) -> list[Stored[M]]:
        result = await self.client.range_prefix(prefix)
        return [decode(model, kv) for kv in result.kvs]

    async def create(self, key: str, doc: BaseModel, exists: str = "") -> int:
        """Write a new document; ``Conflict(exists)`` if the key is already there."""
        try:
            return await self.client.put_if_mod_revision(key, encode(doc), 0)
        except OutOfSequence:
            raise Conflict(exists or f"{key} already exists") from None

    async def replace(self, key: str, doc: BaseModel, version: int) -> int:
        """Write ``doc`` if the stored one is still at ``version``; returns the new one."""
        try:
            return await self.client.put_if_mod_revision(key, encode(doc), version)
        except OutOfSequence:
            raise UpdateOutOfSequence() from None

    async def delete(self, key: str, version: int | None = None) -> None:
        """Delete (only if still at ``version`` when one is given)."""
        if version is None:
            await self.client.delete(key)
            return
        try:
            await self.client.delete_if_mod_revision(key, version)
        except OutOfSequence:
            raise UpdateOutOfSequence() from None

    async def modify(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], M | None],
        missing: str = "",
    ) -> Stored[M] | None:
        """Read, apply ``change``, write back comparing the revision; on a lost race read
        again and re-apply. ``change`` returning None means nothing to write. Returns the
        document as written (or as read when nothing changed); None if the key is gone and
        ``missing`` is empty, else ``NotFound(missing)``."""
        for _ in range(MODIFY_ATTEMPTS):
            stored = await self.read(key, model)
            if stored is None:
                if missing:
                    raise NotFound(missing)
                return None
            changed = change(stored.doc)
            if changed is None:
                return stored
            try:
                revision = await self.client.put_if_mod_revision(
                    key, encode(changed), stored.version
                )
            except OutOfSequence:
                continue
            return Stored(_with_version(changed, revision), revision)
        raise UpdateOutOfSequence()


def _with_version(doc: M, revision: int) -> M:
    if "Version" not in type(doc).model_fields:
        return doc
    data = doc.model_dump(mode="json")
    data["Version"] = {"Index": revision}
    return type(doc).model_validate(data)
