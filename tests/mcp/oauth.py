"""The official MCP Python SDK's OAuth support against Bulkhead and the
test identity provider, knowing only the MCP URL and client credentials:

    python oauth.py

The SDK's first request gets 401 with `resource_metadata`, it reads the
protected resource metadata, then the issuer's authorization server
metadata, asks the token endpoint for a `client_credentials` token for
this resource, and retries. Lists the tools, calls `counter` twice and
reads the session's state resource; prints one JSON line.
Environment: BULKHEAD_URL, IDP_ISSUER, IDP_CLIENT_ID, IDP_CLIENT_SECRET.
"""

import asyncio
import json
import os

import httpx2
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken


class Memory(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def main():
    url = os.environ["BULKHEAD_URL"] + "/mcp"
    auth = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=Memory(),
        client_id=os.environ["IDP_CLIENT_ID"],
        client_secret=os.environ["IDP_CLIENT_SECRET"],
        issuer=os.environ["IDP_ISSUER"],
    )
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(auth=auth, timeout=60))
    async with Client(transport, read_timeout_seconds=60) as c:
        listed = await c.list_tools()
        tools = sorted(t.name for t in listed.tools)
        values = []
        for _ in range(2):
            r = await c.call_tool("counter", {"name": "oauth", "by": 1})
            if r.is_error:
                raise SystemExit(f"FAILED: {r}")
            values.append(r.structured_content["value"])
        sid = (listed.meta or {}).get("bulkhead/session")
        state = json.loads((await c.read_resource(f"bulkhead://sessions/{sid}/state/counter")).contents[0].text)
        print(json.dumps({"session": sid, "tools": tools, "values": values, "state": state["entries"]}))


if __name__ == "__main__":
    asyncio.run(main())
