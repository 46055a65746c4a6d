"""Who may connect: bind to localhost unless told otherwise, and never bind elsewhere without auth.

Peers of this UI bind 0.0.0.0 with no login by default; on premises that exposes data and models to the
whole network, so a non-local `--host` without `--auth user:pass` is refused before anything starts.
"""

from __future__ import annotations

import ipaddress

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class AccessError(ValueError):
    """A bind address or auth setting that the UI refuses (the CLI exits 2 with this message)."""


def is_local_host(host: str) -> bool:
    """True for loopback addresses and names only: 0.0.0.0 and '::' listen on every interface."""
    h = host.strip().strip("[]").lower()
    if h in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`user:pass` -> (user, pass); None stays None."""
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise AccessError("--auth expects user:pass (both non-empty)")
    return user, password


def check_binding(host: str, auth: str | None) -> tuple[str, str] | None:
    """The (user, pass) to require, or None on localhost without auth; AccessError when refused."""
    creds = parse_auth(auth)
    if creds is None and not is_local_host(host):
        raise AccessError(f"--host {host} is not a local address: the UI would be open to the network without a "
                          "login. Add --auth user:pass, or bind 127.0.0.1 (the default)")
    return creds
