"""The official MCP Python SDK in its default configuration, knowing only a
URL and a token (no Bulkhead-Session header):

    python by_url.py URL_PATH NAME BY

connects to BULKHEAD_URL + URL_PATH (`/mcp`, or `/mcp/sessions/<sid>`),
lists the tools, calls `counter` with {"name": NAME, "by": BY} twice, lists
and reads the session's resources, and prints one JSON line: the session
the list named, the two values, the resource names, counter's state and
the audit kinds.
Environment: BULKHEAD_URL, BULKHEAD_AGENT_TOKEN.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


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
        sid = (listed.meta or {}).get("bulkhead/session")
        resources = sorted(r.name for r in (await c.list_resources()).resources)
        state = json.loads((await c.read_resource(f"bulkhead://sessions/{sid}/state/counter")).contents[0].text)
        audit = json.loads((await c.read_resource(f"bulkhead://sessions/{sid}/audit")).contents[0].text)
        kinds = sorted({e["kind"] for e in audit["events"]})
        try:
            await c.read_resource("bulkhead://sessions/someone-else/audit")
            raise SystemExit("FAILED: a resource of another session was read")
        except MCPError:
            pass
        print(json.dumps({"session": sid, "values": values, "resources": resources, "state": state["entries"], "kinds": kinds}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
