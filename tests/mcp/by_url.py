"""The official MCP Python SDK in its default configuration, knowing only a
URL and a token (no Bulkhead-Session header):

    python by_url.py URL_PATH NAME BY

connects to BULKHEAD_URL + URL_PATH (`/mcp`, or `/mcp/sessions/<sid>`),
lists the tools, calls `counter` with {"name": NAME, "by": BY} twice, and
prints one JSON line: the session the list named and the two values.
Environment: BULKHEAD_URL, BULKHEAD_AGENT_TOKEN.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(path, name, by):
    headers = {"Authorization": f"Bearer {os.environ['BULKHEAD_AGENT_TOKEN']}"}
    transport = streamable_http_client(
        os.environ["BULKHEAD_URL"] + path, http_client=httpx2.AsyncClient(headers=headers, timeout=60)
    )
    async with Client(transport, read_timeout_seconds=60) as c:
        listed = await c.list_tools()
        names = {t.name for t in listed.tools}
        if "counter" not in names:
            raise SystemExit(f"FAILED: no counter in {sorted(names)}")
        values = []
        for _ in range(2):
            r = await c.call_tool("counter", {"name": name, "by": by})
            if r.is_error:
                raise SystemExit(f"FAILED: {r}")
            values.append(r.structured_content["value"])
        print(json.dumps({"session": (listed.meta or {}).get("bulkhead/session"), "values": values}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
