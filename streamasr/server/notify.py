"""systemd readiness notification (sd_notify) written to $NOTIFY_SOCKET ourselves, no dependency."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none.

    `NOTIFY_SOCKET` is a unix datagram socket path, or an abstract one when it starts with '@'.
    A failure to send is logged, never raised: notification must not take the daemon down.
    """
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify %r of %s: %s", address, state, exc)
        return False
    return True
