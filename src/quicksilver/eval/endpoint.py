"""Any OpenAI-compatible server as a system under test (``--endpoint URL``), over plain HTTP.

Completions go to ``POST {base}/v1/completions`` with ``prompt``, ``max_tokens``, ``temperature``,
``stop`` and (for infilling) the legacy ``suffix`` field.  ``usage.completion_tokens`` counts the
generated tokens; a server that also reports its forward passes (``usage.forward_passes`` or
``usage.nfe``, as Quicksilver's server is meant to) gets tokens per forward in the report.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .completion import Completion, Usage, cut_at_stops


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered with something that is not a completion."""


def completions_url(base: str) -> str:
    base = base.rstrip("/")
    if base.endswith("/completions"):
        return base
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/completions"


@dataclass
class EndpointSystem:
    url: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    extra: dict = field(default_factory=dict)  # extra request fields, e.g. decoding settings
    usage: Usage = field(default_factory=Usage)

    kind = "endpoint"
    causal = False

    @property
    def name(self) -> str:
        return f"{self.model or 'default model'} @ {self.url}"

    def describe(self, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return f"server-side decoding, T={temperature:g}" + (f", {extra}" if extra else "")

    def info(self) -> dict:
        return {"name": self.name, "kind": "endpoint", "url": self.url, "model": self.model, "extra": self.extra}

    def request(self, prompt: str, max_tokens: int, temperature: float = 0.0, stop: list[str] | None = None,
                suffix: str | None = None, seed: int | None = None) -> Completion:
        body: dict = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, **self.extra}
        if self.model:
            body["model"] = self.model
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API accepts at most four stop sequences
        if suffix is not None:
            body["suffix"] = suffix
        if seed is not None:
            body["seed"] = seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(completions_url(self.url), data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:300]
            raise EndpointError(f"{completions_url(self.url)} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise EndpointError(f"cannot reach {completions_url(self.url)}: {e}") from None
        except json.JSONDecodeError:
            raise EndpointError(f"{completions_url(self.url)} did not answer with JSON") from None
        try:
            text = payload["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{completions_url(self.url)} answered without choices[0].text") from None
        usage = payload.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
        forwards = usage.get("forward_passes", usage.get("nfe")) or 0
        return Completion(text, tokens, float(forwards))

    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, seed: int | None = None,
                 stops: tuple[str, ...] = (), on_batch=None) -> list[Completion]:
        out = []
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            c = self.request(prompt, max_new_tokens, temperature, list(stops), None,
                             None if seed is None else seed + i)
            c.text = cut_at_stops(c.text, stops)  # the server may honour only four of them
            self.usage.add([c], time.perf_counter() - t0)
            out.append(c)
            if on_batch is not None:
                on_batch(1)
        return out

    def infill(self, pairs: list[tuple[str, str]], max_new_tokens: int, on_batch=None) -> list[Completion]:
        out = []
        for prefix, suffix in pairs:
            t0 = time.perf_counter()
            c = self.request(prefix, max_new_tokens, 0.0, None, suffix)
            self.usage.add([c], time.perf_counter() - t0)
            out.append(c)
            if on_batch is not None:
                on_batch(1)
        return out


__all__ = ["EndpointSystem", "EndpointError", "completions_url"]
