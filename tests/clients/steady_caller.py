"""A real MCP client (the Python `mcp` SDK) making many sequential tool calls on one session.

Opens a streamable-HTTP session (`--url`, key sent as `Authorization: Bearer`), then calls `--tool`
with distinct messages `--calls` times. After each call it writes `done N` on stderr, so a test can
act at a given point of the run. A call that fails is counted and the run goes on; if the gateway
says the session is gone, the client opens a new one (as an application would) and counts that.
Prints one JSON report on stdout.
"""

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def open_session(stack, url, key):
    http = await stack.enter_async_context(create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}))
    read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
    session = await stack.enter_async_context(ClientSession(read, write))
    init = await session.initialize()
    return session, init.protocol_version


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--pause-ms", type=int, default=0, help="pause between calls")
    args = parser.parse_args()

    report = {"succeeded": 0, "failed": 0, "initializations": 0, "errors": []}
    stack = AsyncExitStack()
    session, report["protocol_version"] = await open_session(stack, args.url, args.key)
    report["initializations"] += 1
    for i in range(args.calls):
        message = f"python {i}"
        try:
            result = await session.call_tool(args.tool, {"message": message})
            text = result.content[0].text if result.content else ""
            if result.is_error or text != message:
                raise RuntimeError(f"unexpected result: {text!r} (is_error={result.is_error})")
            report["succeeded"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            report["failed"] += 1
            report["errors"].append(f"call {i}: {type(e).__name__}: {e}")
            if "Session terminated" in str(e):
                await stack.aclose()
                stack = AsyncExitStack()
                session, _ = await open_session(stack, args.url, args.key)
                report["initializations"] += 1
        print(f"done {i + 1}", file=sys.stderr, flush=True)
        if args.pause_ms:
            await asyncio.sleep(args.pause_ms / 1000)
    try:
        await stack.aclose()
    except Exception as e:  # noqa: BLE001 - closing a session on a replica that died may fail
        report["close_error"] = f"{type(e).__name__}: {e}"
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
