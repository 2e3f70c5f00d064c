"""Waits, with the official MCP Python SDK (handshake era), for
`notifications/tools/list_changed` from a running Bulkhead host.

    python list_changed.py

Prints `READY` once it listed the tools, then for each of two
notifications relists and prints `LISTED <json of name: description>`.
The Rust test (tests/e2e/mcp.rs) reloads a tool after the first line and
narrows the session after the second. Exits non-zero if a notification
does not come within 30 s. Environment: BULKHEAD_URL,
BULKHEAD_AGENT_TOKEN, BULKHEAD_SESSION.
"""

import asyncio
import json
import os

import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ServerNotification, ToolListChangedNotification


async def main():
    changed = anyio.Event()
    seen = {"n": 0}

    async def handler(message):
        if isinstance(message, ServerNotification):
            message = message.root if hasattr(message, "root") else message
        if isinstance(message, ToolListChangedNotification):
            seen["n"] += 1
            changed.set()

    headers = {
        "Authorization": f"Bearer {os.environ['BULKHEAD_AGENT_TOKEN']}",
        "Bulkhead-Session": os.environ["BULKHEAD_SESSION"],
    }
    transport = streamable_http_client(
        f"{os.environ['BULKHEAD_URL']}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=60)
    )
    async with Client(transport, mode="legacy", message_handler=handler, read_timeout_seconds=60) as c:
        caps = c.server_capabilities
        if not (caps.tools and caps.tools.list_changed):
            raise SystemExit(f"FAILED: listChanged not declared: {caps}")
        await c.list_tools()
        print("READY", flush=True)
        for _ in range(2):
            with anyio.fail_after(30):
                await changed.wait()
            changed = anyio.Event()
            tools = (await c.list_tools()).tools
            print("LISTED " + json.dumps({t.name: t.description for t in tools}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
