"""Load test of a local Quicksilver server: N concurrent streaming clients for a bounded time.

    quicksilver serve --model coder-tiny --port 8000 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 1 8 32 --duration 30

Each client is a loop: send a streamed ``/v1/completions`` request (a prompt from the chosen set,
in turn), read the SSE stream to ``data: [DONE]``, record when the first text arrived and when the
stream ended, and start the next request.  A level of N clients stops starting requests after
``--duration`` seconds (or after ``--requests`` requests in all) and waits for those in flight.

Per level it reports requests/s and aggregate output tokens/s (over the level's wall time), time to
first token and end-to-end latency (p50/p99), and the failures: any request that did not answer 200,
broke off, sent an error frame, or ended without a ``finish_reason`` and ``[DONE]``.  It prints a
table and one JSON line, and writes the JSON to ``--out``.  Only loopback servers are accepted: this
is a benchmark of one's own server, never a load generator against someone else's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Varied Python prompts: a function head, a class, a docstring-led helper, a loop body, a test.
PROMPT_SETS: dict[str, list[str]] = {
    "python": [
        "def fibonacci(n):\n",
        "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"\n",
        "class Stack:\n    def __init__(self):\n",
        "import os\n\n\ndef list_python_files(root):\n",
        "def merge_sorted(a, b):\n    result = []\n    i = j = 0\n",
        "def parse_config(path):\n    \"\"\"Read key=value lines into a dict.\"\"\"\n    config = {}\n",
        "def test_add():\n    assert add(2, 3) == 5\n\n\ndef add(a, b):\n",
        "for i in range(10):\n    if i % 2 == 0:\n",
    ],
    "short": ["def add(a, b):\n", "x = [", "import "],
}


class UserError(Exception):
    """A bad option: printed as one line, exit status 2."""


@dataclass
class Outcome:
    ok: bool
    start: float  # seconds since the level started
    ttft: float | None  # seconds from sending to the first non-empty text
    latency: float  # seconds from sending to the end of the stream
    tokens: int  # generated tokens as the server counted them (stats / usage)
    error: str = ""


@dataclass
class Level:
    clients: int
    requests: int
    failures: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    tokens_per_request: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    errors: list[str] = field(default_factory=list)  # up to 5 distinct failure messages


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def check_loopback(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
        raise UserError(f"--url must point at this machine (127.0.0.1, localhost or ::1), got '{url}'")
    return url.rstrip("/")


def load_prompts(name: str) -> list[str]:
    """A built-in set by name, or a file: one JSON string per line (``.jsonl``) or plain lines."""
    if name in PROMPT_SETS:
        return PROMPT_SETS[name]
    path = Path(name)
    if not path.is_file():
        raise UserError(f"--prompt-set must be one of {', '.join(PROMPT_SETS)} or a file, got '{name}'")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    prompts = [json.loads(line) for line in lines] if path.suffix == ".jsonl" else lines
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise UserError(f"{path} holds no prompts (one per line, JSON strings in a .jsonl file)")
    return prompts


async def one_request(client: httpx.AsyncClient, url: str, body: dict, t_level: float) -> Outcome:
    """Send one streamed completion and read it to the end."""
    t0 = time.perf_counter()
    ttft: float | None = None
    stats_tokens = usage_tokens = 0
    finish_reason = None
    done = False
    error = ""
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                try:
                    text = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                error = f"HTTP {response.status_code}: {text[:200]}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and keep-alive comments
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = f"error frame: {chunk['error'].get('message', chunk['error'])}"
                        break
                    for choice in chunk.get("choices", []):
                        if choice.get("text") and ttft is None:
                            ttft = time.perf_counter() - t0
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                    if chunk.get("stats"):
                        stats_tokens += int(chunk["stats"]["generated_tokens"])
                    if chunk.get("usage"):
                        usage_tokens = int(chunk["usage"]["completion_tokens"])
                if not error and not done:
                    error = "stream ended before [DONE]"
                elif not error and finish_reason is None:
                    error = "no finish_reason before [DONE]"
    except (httpx.HTTPError, ValueError, KeyError) as e:  # connection loss, timeout, bad frame
        error = f"{type(e).__name__}: {e}"[:200]
    t1 = time.perf_counter()
    return Outcome(ok=not error, start=t0 - t_level, ttft=ttft, latency=t1 - t0,
                   tokens=stats_tokens or usage_tokens, error=error)


async def run_level(args: argparse.Namespace, clients: int, prompts: list[str], model: str | None) -> Level:
    url = f"{args.url}/v1/completions"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    outcomes: list[Outcome] = []
    counter = iter(range(sys.maxsize))  # shared, so --requests bounds the level across all clients
    t_level = time.perf_counter()
    deadline = t_level + args.duration

    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers(args)) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                k = next(counter)
                if args.requests and k >= args.requests:
                    return
                body = request_body(args, prompts[k % len(prompts)], model)
                outcomes.append(await one_request(client, url, body, t_level))

        await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t_level

    good = [o for o in outcomes if o.ok]
    failures = len(outcomes) - len(good)
    tokens = sum(o.tokens for o in good)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    ttfts = [o.ttft for o in good if o.ttft is not None]
    lats = [o.latency for o in good]
    errors = sorted({o.error for o in outcomes if not o.ok})[:5]
    return Level(clients=clients, requests=len(outcomes), failures=failures, wall_s=round(wall, 3),
                 requests_per_s=round(len(good) / wall, 3), output_tokens_per_s=round(tokens / wall, 2),
                 tokens_per_request=round(tokens / len(good), 2) if good else 0.0,
                 ttft_p50_ms=ms(percentile(ttfts, 50)), ttft_p99_ms=ms(percentile(ttfts, 99)),
                 latency_p50_ms=ms(percentile(lats, 50)), latency_p99_ms=ms(percentile(lats, 99)),
                 errors=errors)


def headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def request_body(args: argparse.Namespace, prompt: str, model: str | None) -> dict:
    body: dict = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature,
                  "stream": True, "stream_options": {"include_usage": True}, "diffusing": args.diffusing}
    if model:
        body["model"] = model
    for name in ("steps", "block_length", "commit", "threshold", "cache"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    return body


async def served_model(args: argparse.Namespace) -> str | None:
    """The model id from /v1/models; also proves the server is up before the clock starts."""
    async with httpx.AsyncClient(timeout=10.0, headers=headers(args)) as client:
        try:
            response = await client.get(f"{args.url}/v1/models")
        except httpx.HTTPError as e:
            raise UserError(f"no server answers at {args.url} ({type(e).__name__})") from e
        if response.status_code != 200:
            raise UserError(f"{args.url}/v1/models answered {response.status_code}")
        data = response.json().get("data") or []
        return data[0]["id"] if data else None


def table(levels: list[Level]) -> str:
    base = next((lv.output_tokens_per_s for lv in levels if lv.clients == 1), None)
    head = ("clients", "requests", "failed", "req/s", "out tok/s", "× 1 client", "tok/req",
            "TTFT p50 ms", "TTFT p99 ms", "lat p50 ms", "lat p99 ms")
    rows = []
    fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    for lv in levels:
        scale = f"{lv.output_tokens_per_s / base:.2f}" if base else "–"
        rows.append((str(lv.clients), str(lv.requests), str(lv.failures), f"{lv.requests_per_s:.2f}",
                     f"{lv.output_tokens_per_s:.1f}", scale, f"{lv.tokens_per_request:.1f}",
                     fmt(lv.ttft_p50_ms), fmt(lv.ttft_p99_ms), fmt(lv.latency_p50_ms), fmt(lv.latency_p99_ms)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback only)")
    p.add_argument("--clients", type=int, nargs="+", action="extend",
                   help="concurrent clients per level; repeatable or a list (default: 1 8 32)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level during which requests start")
    p.add_argument("--requests", type=int, default=0, help="stop a level after this many requests (0: no bound)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--prompt-set", default="python",
                   help=f"built-in set ({', '.join(PROMPT_SETS)}) or a file of prompts")
    p.add_argument("--diffusing", action="store_true", help="ask for draft frames too (more bytes per request)")
    p.add_argument("--steps", type=int)
    p.add_argument("--block-length", type=int)
    p.add_argument("--commit", choices=["fixed", "threshold", "factor", "entropy"])
    p.add_argument("--threshold", type=float)
    p.add_argument("--cache", choices=["none", "prefix", "dual"])
    p.add_argument("--api-key", default=None)
    p.add_argument("--warmup", type=int, default=2, help="untimed requests before the first level")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = p.parse_args(argv)
    args.clients = args.clients or [1, 8, 32]
    if any(c < 1 or c > 256 for c in args.clients):
        raise UserError("--clients must be between 1 and 256")
    if args.duration <= 0 or args.max_tokens <= 0 or args.requests < 0:
        raise UserError("--duration and --max-tokens must be positive, --requests zero or positive")
    args.url = check_loopback(args.url)
    return args


async def main_async(args: argparse.Namespace) -> dict:
    prompts = load_prompts(args.prompt_set)
    model = await served_model(args)
    load_before = os.getloadavg()[0]  # the machine may be shared: the report says how busy it was
    if args.warmup:
        async with httpx.AsyncClient(timeout=args.timeout, headers=headers(args)) as client:
            for k in range(args.warmup):
                await one_request(client, f"{args.url}/v1/completions",
                                  request_body(args, prompts[k % len(prompts)], model), time.perf_counter())
    levels = [await run_level(args, n, prompts, model) for n in args.clients]
    settings = {k: getattr(args, k) for k in ("duration", "requests", "max_tokens", "temperature", "prompt_set",
                                              "diffusing", "steps", "block_length", "commit", "threshold", "cache")}
    return {"url": args.url, "model": model, "settings": settings, "prompts": len(prompts),
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "load_avg_1m_before": round(load_before, 2),
                        "load_avg_1m_after": round(os.getloadavg()[0], 2)},
            "levels": [asdict(lv) for lv in levels]}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        result = asyncio.run(main_async(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    levels = [Level(**lv) for lv in result["levels"]]
    print(table(levels))
    for lv in levels:
        for err in lv.errors:
            print(f"  {lv.clients} clients, failure: {err}")
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
