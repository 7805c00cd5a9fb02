"""A real MCP client (the official Python SDK, `mcp` on PyPI) against memrl.

    mcp_client.py stdio MEMRL DATA MODEL      # spawns `memrl mcp --data DATA --model MODEL`
    mcp_client.py http URL KEY OTHER_KEY      # `memrl serve` at URL (/mcp), KEY scoped to one namespace

Runs the agent loop an LLM would (list the tools, retrieve, report the outcome, add a memory,
stats) and the errors it could make, and exits non-zero on the first surprise. Run by
`crates/memrl-cli/tests/serve_mcp.rs`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TOOLS = {"retrieve_memories", "report_outcome", "add_memory", "memory_stats"}


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


async def call(session: ClientSession, tool: str, args: dict[str, Any]) -> Any:
    result = await session.call_tool(tool, args)
    check(not result.is_error, f"{tool} {args}: {result.content}")
    check(bool(result.content) and result.content[0].type == "text", f"{tool}: no text for the model")
    return result.structured_content


async def call_error(session: ClientSession, tool: str, args: dict[str, Any], needle: str) -> None:
    result = await session.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    check(result.is_error, f"{tool} {args} should have failed: {text}")
    check(needle in text, f"{tool} {args}: {needle!r} not in {text!r}")


async def agent_loop(session: ClientSession) -> None:
    await session.initialize()
    tools = (await session.list_tools()).tools
    check({t.name for t in tools} == TOOLS, f"tools: {[t.name for t in tools]}")
    described = {t.name: t.description or "" for t in tools}
    check("FIRST" in described["retrieve_memories"], "retrieve_memories must say it comes first")
    check("retrieval_id" in described["report_outcome"], "report_outcome must ask for the retrieval_id")
    check("report_outcome" in described["add_memory"], "add_memory must say it follows report_outcome")
    for t in tools:
        check(t.input_schema.get("type") == "object", f"{t.name}: input schema {t.input_schema}")

    # An empty memory: nothing to advise, yet a retrieval id to report on.
    first = await call(session, "retrieve_memories", {"task": "parse a date"})
    check(first["hits"] == [], f"first retrieval: {first}")
    await call(session, "report_outcome", {"retrieval_id": first["retrieval_id"], "reward": -1})
    added = await call(
        session, "add_memory", {"task": "parse a date", "experience": "use chrono", "success": True}
    )
    check(isinstance(added["id"], int), f"add_memory: {added}")

    again = await call(session, "retrieve_memories", {"task": "parse a date", "k": 3})
    check(len(again["hits"]) == 1 and again["hits"][0]["experience"] == "use chrono", f"{again}")
    report = await call(session, "report_outcome", {"retrieval_id": again["retrieval_id"], "reward": 1})
    check(report["memories"] == 1, f"report: {report}")
    stats = await call(session, "memory_stats", {})
    # q_signs: memories with Q > 0, = 0, < 0; one report of reward 1 made it positive.
    check(stats["memories"] == 1 and stats["q_signs"] == [1, 0, 0], f"stats: {stats}")

    # The mistakes a model could make are tool errors it can read, not protocol failures.
    await call_error(session, "report_outcome", {"retrieval_id": again["retrieval_id"], "reward": 1}, "already reported")
    await call_error(session, "report_outcome", {"retrieval_id": "abc", "reward": 1}, "retrieval_id")
    await call_error(session, "retrieve_memories", {"task": "x", "k": 0}, "k")
    await call_error(session, "retrieve_memories", {"task": "x", "namespace": "../etc"}, "invalid namespace")


async def stdio(memrl: str, data: str, model: str) -> None:
    params = StdioServerParameters(command=memrl, args=["mcp", "--data", data, "--model", model])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await agent_loop(session)


async def http(url: str, key: str, other_key: str) -> None:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with streamable_http_client(url, http_client=client) as (read, write):
        async with ClientSession(read, write) as session:
            await agent_loop(session)
            # The key is scoped to its namespace: another one is refused.
            await call_error(session, "memory_stats", {"namespace": "elsewhere"}, "forbidden")
    # The other key sees none of the first key's memories (its own namespace, empty).
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {other_key}"})
    async with streamable_http_client(url, http_client=client) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            other = await call(session, "retrieve_memories", {"task": "parse a date"})
            check(other["hits"] == [], f"another key's namespace leaked: {other}")
    # No key: the transport is refused (401) before any tool runs.
    refused = False
    try:
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=20) as session:
                await session.initialize()
    except BaseException:  # noqa: BLE001 - any failure to connect is the expected outcome
        refused = True
    check(refused, "a session without a key was accepted")


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "stdio":
        asyncio.run(stdio(*args))
    elif mode == "http":
        asyncio.run(http(*args))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"mcp {mode}: ok")


if __name__ == "__main__":
    main()
