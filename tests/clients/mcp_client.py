"""A real MCP client (the Python `mcp` SDK) driven by the end-to-end tests.

Connects over streamable HTTP (`--url`, key sent as `Authorization: Bearer`) or spawns a stdio server
(`--stdio CMD ARG...`), then lists tools, optionally calls one, reads a resource and gets a prompt,
and prints one JSON document with everything it saw.
"""

import argparse
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def exercise(session, args):
    await session.initialize()
    out = {"tools": [dump(t) for t in (await session.list_tools()).tools]}
    if args.call:
        result = await session.call_tool(args.call, json.loads(args.arguments))
        out["call"] = dump(result)
    if args.read:
        out["resource"] = dump(await session.read_resource(args.read))
    if args.list_resources:
        out["resources"] = [dump(r) for r in (await session.list_resources()).resources]
    if args.prompt:
        out["prompt"] = dump(await session.get_prompt(args.prompt, json.loads(args.prompt_arguments)))
    if args.list_prompts:
        out["prompts"] = [dump(p) for p in (await session.list_prompts()).prompts]
    return out


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--stdio", nargs=argparse.REMAINDER)
    parser.add_argument("--call")
    parser.add_argument("--arguments", default="{}")
    parser.add_argument("--read")
    parser.add_argument("--list-resources", action="store_true")
    parser.add_argument("--prompt")
    parser.add_argument("--prompt-arguments", default="{}")
    parser.add_argument("--list-prompts", action="store_true")
    args = parser.parse_args()

    if args.url:
        headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(args.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    out = await exercise(session, args)
    else:
        params = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await exercise(session, args)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
