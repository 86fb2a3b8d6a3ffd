"""Who may read and write what in the swarm's etcd (docs/swarm.md, "Who may read and
write what").

Every node has an etcd user named by its node id, with a random password it receives
when it joins (over the join's TLS) and keeps in its state. A manager's user has etcd's
``root`` role: the whole keyspace, users and membership. A worker's user has a role of
its own, ``worker-<node id>``, that reads only what a worker needs (the cluster
document for its heartbeat period, the node documents for its own role and the
managers' addresses) and writes only its heartbeat key
``alive/<node id>``. So a worker reads no ``cluster-secrets`` and writes no node
document, its own included. Role changes switch the user's role where the document's
role changes; ``node rm`` deletes the user.
"""

from __future__ import annotations

import contextlib
import secrets

from engine.errors import Conflict
from engine.swarm.ca import NodeRole
from engine.swarm.etcd import EtcdClient, EtcdCredentials, Permission
from engine.swarm.store import CLUSTER_KEY, NODES_PREFIX, alive_key

ROOT = "root"  # etcd's user that must exist to enable auth, and its all-powerful role


def worker_role(node_id: str) -> str:
    return f"worker-{node_id}"


def worker_permissions(node_id: str) -> list[Permission]:
    """Everything a worker reads or writes today (liveness.Heartbeat, the watch of its
    own document, the managers' discovery, /info). Not ``leader`` nor ``alive/``: their
    values show lease IDs, and etcd 3.4 lets any user keep any lease alive (a worker
    could keep a dead leader's claim from lapsing)."""
    return [
        Permission(CLUSTER_KEY, "READ"),
        Permission(NODES_PREFIX, "READ", prefix=True),
        Permission(alive_key(node_id), "WRITE"),
    ]


def new_password() -> str:
    return secrets.token_urlsafe(32)


async def enable_auth(client: EtcdClient, first_manager: str) -> EtcdCredentials:
    """At init (auth still off): ``root`` (with a password nobody keeps: managers' own
    users have the root role), the first manager's user, then auth on. The client goes
    on with the manager's user."""
    await client.user_add(ROOT, new_password())
    await client.user_grant_role(ROOT, ROOT)
    credentials = EtcdCredentials(first_manager, new_password())
    await client.user_add(credentials.user, credentials.password)
    await client.user_grant_role(credentials.user, ROOT)
    await client.auth_enable()
    client.set_credentials(credentials)
    return credentials


async def add_node_user(client: EtcdClient, node_id: str, role: NodeRole) -> EtcdCredentials:
    """A joining node's user, with the access of its role."""
    credentials = EtcdCredentials(node_id, new_password())
    await client.user_add(credentials.user, credentials.password)
    await set_node_access(client, node_id, role, fresh=True)
    return credentials


async def set_node_access(
    client: EtcdClient, node_id: str, role: NodeRole, fresh: bool = False
) -> None:
    """Give the node's user the access of ``role`` and, unless the user is ``fresh``
    (no role yet), take the other role's."""
    if role is NodeRole.MANAGER:
        await client.user_grant_role(node_id, ROOT)
        if not fresh:
            await client.user_revoke_role(node_id, worker_role(node_id))
        return
    name = worker_role(node_id)
    with contextlib.suppress(Conflict):  # etcd: "role name already exists"
        await client.role_add(name)
    for permission in worker_permissions(node_id):
        await client.role_grant(name, permission)
    await client.user_grant_role(node_id, name)
    if not fresh:
        await client.user_revoke_role(node_id, ROOT)


async def remove_node_user(client: EtcdClient, node_id: str) -> None:
    await client.user_delete(node_id)
    await client.role_delete(worker_role(node_id))
