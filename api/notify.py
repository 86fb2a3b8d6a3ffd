"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The unit is ``Type=notify``: systemd waits for ``READY=1`` before ordering dependants
after us, and ``STOPPING=1`` tells it the shutdown is ours. A leading ``@`` names an
abstract socket. The variable is taken out of the environment at start-up (``Notifier.
from_environ``) so that children, conmon above all, cannot send ``MAINPID=`` or
``READY=1`` on our behalf.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None) -> None:
        self._address = address

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        return cls(environ.pop("NOTIFY_SOCKET", None) or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. "READY=1"); False when disabled or the send failed (logged)."""
        if self._address is None:
            return False
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A datagram to a local socket does not block unless its queue is full;
                # then the message is dropped rather than stalling the event loop.
                sock.setblocking(False)
                sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state, exc)
            return False
        return True
