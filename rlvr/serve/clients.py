"""What a client of the server needs on the client side: a cheap HTTP client for each ``openai`` client."""

from __future__ import annotations

from typing import Any


def plain_http(timeout_s: float, asynchronous: bool = False) -> Any:
    """An httpx client for one session's ``openai`` client (which owns and closes it). The server speaks
    plain HTTP, so the client loads no certificate store: httpx's default one costs about 30 ms of CPU per
    client, once per session, on the GIL the engine and the server share (at 128 sessions a step,
    seconds). One pool shared by every session is no answer: 64 threads on one pool's lock cost more.
    Nor does it read proxy settings from the environment (``trust_env=False``): the server is on this
    machine, so an ``HTTP_PROXY`` must not reroute its calls, and scanning the environment for proxies
    costs each new client about a millisecond of the same GIL."""
    import httpx

    kind = httpx.AsyncClient if asynchronous else httpx.Client
    return kind(verify=False, trust_env=False, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
