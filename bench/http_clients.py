"""How fast can the dispatcher POST? HTTP client setups against a 50 ms endpoint.

Run: ``.venv/bin/python -m bench.http_clients [--requests 3000] [--in-flight 64] [--repeat 3]``

A sink (``tests/_sinks.py``) runs in a separate process, so it does not share the
client's event loop or interpreter, and answers every POST after 50 ms. Each setup
sends ``--requests`` small JSON POSTs with ``--in-flight`` requests outstanding. With
64 in flight and 50 ms per answer, no client can exceed 64 / 0.05 = 1,280 requests/s:
that is "the bound", and each setup is reported as a share of it (median of
``--repeat`` runs, after a warm-up).

Setups (all httpx as the API unless said otherwise):

- ``httpx-default``: ``httpx.AsyncClient()``, pooled keep-alive, reads the body.
- ``httpx-no-keepalive``: the default pool with ``max_keepalive_connections=0``.
- ``httpx-default-close-on-headers``: the default pool used as firecron must (stream,
  close at the headers, never read the body), which rules out connection reuse.
- ``httpx-aiohttp``: ``httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport())``,
  keep-alive, reads the body; ``httpx-aiohttp-close-on-headers`` as firecron must.
- ``firecron-sender``: :class:`~firecron.transport.sender.Sender` with
  ``concurrency=max_open=in-flight``, the same 64 in flight (guard, pinning, slots
  and all), one ``send`` per request gathered at once, as the dispatcher fires.
- ``firecron-sender-max-open-1000``: the production split (64 sending, 1,000 open);
  more than 64 are then in flight, so it may pass "the bound" (which is the point).

Results are printed as a table and written to ``bench/results/http_clients.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

import _sinks  # tests/ is on the path: bench/__init__.py
from firecron.transport.sender import Dispatch, Sender, SendResult

ROOT = Path(__file__).resolve().parent.parent

DELAY = 0.05
BODY = (
    b'{"run_id":"nightly@20270101T000000Z","schedule_id":"nightly",'
    b'"scheduled_for":"2027-01-01T00:00:00Z","attempt":1,"trigger":"schedule","params":{}}'
)
HEADERS = {"content-type": "application/json", "idempotency-key": "nightly@20270101T000000Z/1"}

Send = Callable[[], Awaitable[None]]


async def _drive(send: Send, n: int, in_flight: int) -> float:
    """Run ``n`` sends with ``in_flight`` workers; returns requests per second."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - start)


def _httpx_setup(client_factory: Callable[[], httpx.AsyncClient], close_on_headers: bool) -> Any:
    async def run(url: str, n: int, in_flight: int) -> float:
        async with client_factory() as client:

            async def read_body() -> None:
                r = await client.post(url, content=BODY, headers=HEADERS)
                assert r.status_code == 200, r.status_code

            async def close_at_headers() -> None:
                async with client.stream("POST", url, content=BODY, headers=HEADERS) as r:
                    assert r.status_code == 200, r.status_code

            send = close_at_headers if close_on_headers else read_body
            await _drive(send, min(200, n), in_flight)  # warm-up
            return await _drive(send, n, in_flight)

    return run


def _aiohttp_client() -> httpx.AsyncClient:
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport())


def _sender_setup(max_open: int | None) -> Any:
    async def run(url: str, n: int, in_flight: int) -> float:
        sender = Sender(
            concurrency=in_flight,
            max_open=max_open or in_flight,
            ack_timeout=5.0,
            allow_private_targets=True,
        )
        dispatch = Dispatch(url=url, body=BODY, headers=HEADERS, key="nightly@20270101T000000Z/1")

        async def send_all(count: int) -> list[SendResult]:
            return list(await asyncio.gather(*(sender.send(dispatch) for _ in range(count))))

        try:
            await send_all(min(200, n))  # warm-up
            start = time.perf_counter()
            results = await send_all(n)
            rate = n / (time.perf_counter() - start)
        finally:
            await sender.aclose()
        bad = [r for r in results if r.status_code != 200]
        assert not bad, bad[0]
        return rate

    return run


SETUPS: dict[str, Any] = {
    "httpx-default": _httpx_setup(httpx.AsyncClient, close_on_headers=False),
    "httpx-no-keepalive": _httpx_setup(
        lambda: httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)),
        close_on_headers=False,
    ),
    "httpx-default-close-on-headers": _httpx_setup(httpx.AsyncClient, close_on_headers=True),
    "httpx-aiohttp": _httpx_setup(_aiohttp_client, close_on_headers=False),
    "httpx-aiohttp-close-on-headers": _httpx_setup(_aiohttp_client, close_on_headers=True),
    "firecron-sender": _sender_setup(None),
    "firecron-sender-max-open-1000": _sender_setup(1000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(SETUPS), help="setups to run")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "http_clients.json"
    )
    args = parser.parse_args()
    bound = args.in_flight / DELAY
    rows: list[dict[str, Any]] = []
    names = args.only or list(SETUPS)
    print(f"{'setup':34} {'req/s':>8} {'% bound':>8}   runs")
    with _sinks.serve_process(delay=DELAY) as base:
        url = f"{base}/hook"
        for name in names:
            rates = [
                asyncio.run(SETUPS[name](url, args.requests, args.in_flight))
                for _ in range(args.repeat)
            ]
            median = statistics.median(rates)
            rows.append(
                {
                    "setup": name,
                    "requests_per_second": round(median),
                    "percent_of_bound": round(100 * median / bound, 1),
                    "runs": [round(r) for r in rates],
                }
            )
            runs = " ".join(f"{r:.0f}" for r in rates)
            print(f"{name:34} {median:8.0f} {100 * median / bound:7.1f}%   {runs}", flush=True)
    result = {
        "requests": args.requests,
        "in_flight": args.in_flight,
        "endpoint_delay_s": DELAY,
        "bound_requests_per_second": bound,
        "statistic": f"median of {args.repeat} runs",
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            **{
                pkg: version(pkg)
                for pkg in ("httpx", "httpcore", "anyio", "sniffio", "aiohttp", "httpx-aiohttp")
            },
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bound: {bound:.0f} req/s; wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
