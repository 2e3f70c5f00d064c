"""Drives a running Bulkhead host with the official MCP Python SDK.

    python client.py {http|stdio} {legacy|auto}

`legacy` speaks the initialize handshake (Mcp-Session-Id); `auto` lets the
SDK probe `server/discover` and use the 2026-07-28 per-request envelope.
The environment names the host: BULKHEAD_URL, BULKHEAD_AGENT_TOKEN,
BULKHEAD_APPROVER_TOKEN, BULKHEAD_SESSION (a session with counter, notes
(approval required) and memory-bomb), BULKHEAD_BIN (for stdio).

Exits non-zero on the first broken expectation; prints one JSON line with
the call ids it made, which the Rust test finds in the HTTP API and audit.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

URL = os.environ["BULKHEAD_URL"]
AGENT = os.environ["BULKHEAD_AGENT_TOKEN"]
APPROVER = os.environ["BULKHEAD_APPROVER_TOKEN"]
SESSION = os.environ["BULKHEAD_SESSION"]


def expect(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def server(transport):
    if transport == "http":
        headers = {"Authorization": f"Bearer {AGENT}", "Bulkhead-Session": SESSION}
        return streamable_http_client(f"{URL}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=60))
    return StdioServerParameters(
        command=os.environ["BULKHEAD_BIN"],
        args=["mcp", "--connect", URL, "--token-env", "BULKHEAD_AGENT_TOKEN", "--session", SESSION],
        env={"BULKHEAD_AGENT_TOKEN": AGENT, "PATH": os.environ.get("PATH", "")},
    )


async def approve(call_id):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {APPROVER}"}) as http:
        r = await http.post(f"{URL}/v1/approvals/{call_id}", json={"decision": "approve", "reason": "mcp test"})
        expect(r.status_code == 200, f"approval answered {r.status_code}: {r.text}")


async def main(transport, mode):
    calls = []
    async with Client(server(transport), mode=mode, read_timeout_seconds=60) as c:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        expect(
            set(listed) == {"counter", "notes", "memory-bomb", "bulkhead_call_result"},
            f"tools are the session's boundary: {sorted(listed)}",
        )
        expect("template" not in listed, "an ungranted tool is absent")
        counter = listed["counter"]
        expect(counter.input_schema.get("properties", {}).get("by") == {"type": "integer"}, "input_schema from the manifest")
        expect(counter.annotations.read_only_hint is True, "counter writes nothing outside its state")
        expect(counter.annotations.open_world_hint is False, "counter has no network")

        first = await c.call_tool("counter", {"name": "mcp", "by": 2})
        second = await c.call_tool("counter", {"name": "mcp", "by": 3})
        for r in (first, second):
            expect(r.is_error is False, f"counter succeeded: {r}")
            calls.append(r.meta["bulkhead/call_id"])
        expect(
            second.structured_content["value"] == first.structured_content["value"] + 3,
            f"state carries between calls: {first.structured_content} then {second.structured_content}",
        )
        expect(second.meta["bulkhead/usage"]["fuel"] > 0, "usage in the result metadata")

        bad = await c.call_tool("counter", {"by": "three"})
        expect(bad.is_error is True, "invalid input is a tool error")
        expect(bad.structured_content["error"]["code"] == "invalid_input", f"invalid_input: {bad.structured_content}")

        try:
            await c.call_tool("template", {})
            raise SystemExit("FAILED: an ungranted tool was callable")
        except MCPError as e:
            expect("unknown tool" in e.error.message, f"ungranted tool refused: {e.error.message}")

        trap = await c.call_tool("memory-bomb", {})
        expect(trap.is_error is True, "a trap is a tool error")
        expect(trap.structured_content["error"]["code"] == "memory", f"trap code: {trap.structured_content}")
        expect(trap.structured_content["status"] == "trapped", "trap status")
        calls.append(trap.meta["bulkhead/call_id"])

        pending = await c.call_tool("notes", {"op": "add", "text": "needs a human"})
        expect(pending.is_error is False, "a pending approval is not an error")
        expect(pending.structured_content["status"] == "pending_approval", f"pending: {pending.structured_content}")
        call_id = pending.structured_content["call_id"]
        calls.append(call_id)
        early = await c.call_tool("bulkhead_call_result", {"call_id": call_id})
        expect(early.structured_content["status"] == "pending_approval", "still pending before the decision")
        await approve(call_id)
        done = await c.call_tool("bulkhead_call_result", {"call_id": call_id, "wait_seconds": 30})
        expect(done.is_error is False, f"approved call succeeded: {done}")
        expect(done.meta["bulkhead/status"] == "succeeded", f"approved status: {done.meta}")
    print(json.dumps({"calls": calls}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
