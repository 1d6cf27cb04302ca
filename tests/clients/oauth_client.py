"""The Python `mcp` SDK's OAuth client against the gateway, starting from nothing but its URL.

`OAuthClientProvider` does the MCP authorization flow: the gateway's 401, its protected resource
metadata, the authorization server's metadata, dynamic client registration, then the authorization
code with PKCE. The sign-in and consent screens of the test's OpenID provider (oidc-provider's
development interactions) are completed here by HTTP, as `--login`. Then tools/list and optionally
one tools/call. Prints one JSON document: the tools, the call's result, and the access token (so the
test can reuse it as a real token of that user).
"""

import argparse
import asyncio
import json
import re
import sys
from html import unescape
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

# Never contacted: the authorization server's redirect to it is read, not followed.
REDIRECT_URI = "http://127.0.0.1:9/callback"


class MemoryStorage:
    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class Browser:
    """Follows the authorization URL through the provider's screens like a user would."""

    def __init__(self, login):
        self.login = login
        self.result = None
        self.screens = []

    async def redirect_handler(self, url):
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as http:
            response = await http.get(url)
            for _ in range(20):
                if response.is_redirect:
                    target = urljoin(str(response.url), response.headers["location"])
                    if target.startswith(REDIRECT_URI):
                        query = parse_qs(urlsplit(target).query)
                        if "error" in query:
                            raise RuntimeError(f"authorization refused: {query}")
                        self.result = AuthorizationCodeResult(
                            code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
                        )
                        return
                    response = await http.get(target)
                    continue
                response.raise_for_status()
                html = response.text
                action = re.search(r'<form[^>]*action="([^"]+)"', html)
                prompt = re.search(r'name="prompt" value="([^"]+)"', html)
                if not action or not prompt:
                    raise RuntimeError(f"unexpected page: {html[:500]}")
                form = {"prompt": prompt.group(1)}
                if prompt.group(1) == "login":
                    form.update(login=self.login, password="any")
                self.screens.append(prompt.group(1))
                response = await http.post(urljoin(str(response.url), unescape(action.group(1))), data=form)
            raise RuntimeError("too many redirects")

    async def callback_handler(self):
        return self.result


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--login", required=True)
    parser.add_argument("--call")
    parser.add_argument("--arguments", default="{}")
    args = parser.parse_args()

    browser = Browser(args.login)
    storage = MemoryStorage()
    auth = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name="mcpgw oauth test",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with create_mcp_http_client(auth=auth) as http:
        async with streamable_http_client(args.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                out = {"tools": [t.name for t in tools.tools], "screens": browser.screens}
                if args.call:
                    result = await session.call_tool(args.call, json.loads(args.arguments))
                    out["call"] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    out["access_token"] = storage.tokens.access_token if storage.tokens else None
    out["client_registered"] = storage.client_info is not None
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
