#!/usr/bin/env python3
"""An example dexpulse client in Python (the `websockets` package): subscribes with a filter,
prints every event, tracks seq, and reconnects with resume_from.

    pip install websockets
    python3 examples/bot.py ws://127.0.0.1:8080/v1/ws '{"min_score": 60}'

Set DEXPULSE_TOKEN to send an API key; DEXPULSE_BOT_MAX_EVENTS to stop after that many events.
"""
import asyncio
import json
import os
import sys

import websockets


async def session(url, flt, pos, state):
    headers = {}
    if os.environ.get("DEXPULSE_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["DEXPULSE_TOKEN"]
    async with websockets.connect(url, additional_headers=headers) as ws:
        sub = {"op": "subscribe", "id": 1, "channel": "signals", "filter": flt}
        async for raw in ws:
            m = json.loads(raw)
            t = m.get("type")
            if t == "welcome":
                if pos.get("epoch") not in (None, m["epoch"]):
                    print("the server restarted (new epoch): events in between are lost", file=sys.stderr)
                    pos.clear()
                if "seq" in pos:
                    sub["resume_from"] = {"epoch": pos["epoch"], "seq": pos["seq"]}
                else:
                    pos["seq"] = m["head_seq"]
                pos["epoch"] = m["epoch"]
                await ws.send(json.dumps(sub))
            elif t == "subscribed" and m.get("recovered") is False:
                print(f"could not resume: retained events start at seq {m.get('oldest_seq')}", file=sys.stderr)
            elif t == "signal":
                seq, e = m["seq"], m["event"]
                if pos.get("seq") and seq > pos["seq"] + 1:
                    print(f"gap: seq {pos['seq'] + 1} to {seq - 1} not received", file=sys.stderr)
                pos["seq"] = seq
                print(f"seq={seq} {e['phase']} {e['kind']} {e['direction']} {e['chain']}:{e['pair_address']} "
                      f"score={e['score']} source={e['source']}", flush=True)
                state["n"] += 1
                if state["max"] and state["n"] >= state["max"]:
                    return True
            elif t == "lagged":
                print(f"lagged: missed {m['missed_from']} to {m['missed_to']}", file=sys.stderr)
            elif t == "error":
                print(f"error: {m['code']} {m['message']}", file=sys.stderr)
    return False


async def main():
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/v1/ws"
    flt = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    pos, state = {}, {"n": 0, "max": int(os.environ.get("DEXPULSE_BOT_MAX_EVENTS", "0"))}
    backoff = 0.25
    while True:
        try:
            if await session(url, flt, pos, state):
                return
            backoff = 0.25
        except (OSError, websockets.exceptions.WebSocketException) as e:
            print(f"connection failed: {e}", file=sys.stderr)
        print(f"reconnecting in {backoff}s (resume from {pos})", file=sys.stderr)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10)


if __name__ == "__main__":
    asyncio.run(main())
