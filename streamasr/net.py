"""Addresses and tokens on the network: loopback, and a token that would travel in clear."""

from __future__ import annotations

import argparse
import ipaddress
import os
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1 (also as [::1], an IPv4-mapped ::ffff:127.x.y.z, or with
    a trailing dot); False for wildcards and other addresses."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def token_in_clear(url: str) -> bool:
    """True when a token sent to `url` would cross the network unencrypted: ws:// or http://
    to a host other than this machine. wss:// and https:// are never in clear."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("ws", "http"):
        return False
    return not is_loopback(parts.hostname or "")


def add_token_args(parser: argparse.ArgumentParser) -> None:
    """A client's `--token` (default $STREAMASR_TOKEN) and `--insecure-token`."""
    parser.add_argument(
        "--token",
        default=os.environ.get("STREAMASR_TOKEN"),
        help="bearer token (default: $STREAMASR_TOKEN; the flag shows in ps)",
    )
    parser.add_argument(
        "--insecure-token",
        action="store_true",
        help="send the token over plain ws:// to a host other than this one (anyone on the "
        "network can read it; without this flag the client refuses)",
    )


def token_refusal(args: argparse.Namespace, url: str) -> str | None:
    """Why a client with `add_token_args`'s options must not connect to `url`, or None."""
    if args.token and not args.insecure_token and token_in_clear(url):
        return (
            f"refusing to send the token unencrypted over ws:// to {urlsplit(url).hostname}; "
            "use wss://, or --insecure-token to send it anyway"
        )
    return None
