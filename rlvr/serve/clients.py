"""What a client of the server needs on the client side: one connection pool for many ``openai`` clients."""

from __future__ import annotations

from typing import Any


def shared_http(limit: int, timeout_s: float, asynchronous: bool = False) -> Any:
    """One httpx connection pool for every session's ``openai`` client. A client that builds its own pool
    costs about 30 ms of CPU (an SSL context), once per session, on the GIL that the engine and the server
    share: at 128 sessions a step, seconds. A session's ``client.close()`` (or ``with client:``) leaves the
    pool open for the others; ``shutdown()`` (``await ashutdown()``) closes it."""
    import httpx

    kwargs = {"limits": httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
              "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))}
    if asynchronous:
        class SharedAsync(httpx.AsyncClient):
            async def aclose(self) -> None:
                pass

            async def ashutdown(self) -> None:
                await super().aclose()

        return SharedAsync(**kwargs)

    class Shared(httpx.Client):
        def close(self) -> None:
            pass

        def shutdown(self) -> None:
            super().close()

    return Shared(**kwargs)
