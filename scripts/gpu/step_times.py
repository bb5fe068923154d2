"""Time one decoding forward pass of a LLaDA-8B-shaped model (random bf16 weights) at batch 1,
against the floors the card sets.

Three passes, each with the LM head on the positions a decoder reads:

* ``ar_step``: 1 query token against 511 cached positions (an AR decoding step; attention over all
  cached keys costs the same whether the mask is causal or not);
* ``dual_step``: a 32-token block against a dual cache of 256 prompt + 224 suffix positions;
* ``full_canvas``: 256 prompt + 256 generated positions, no cache (logits for one 32-token block).

Each pass runs on ``sampling.captured.CapturedStep`` (static buffers), as ``eager`` (kernels launched
from Python each time), ``graph`` (replayed CUDA graph) and, for the two cached steps, ``compiled``
(``torch.compile`` of the step) and ``compiled+graph``.  Times are medians over CUDA-event-timed runs.
Floors: bytes read per pass (every weight but the embedding table, which is only gathered, plus the
cached keys/values) over the card's HBM bandwidth (the datasheet's, stated in the output, and the
copy bandwidth measured here), and FLOPs over the bf16 matrix rate (datasheet and measured).

Results are written to ``--out`` after every measurement, so a run cut off by its time limit keeps
what it measured.  ``--shape tiny`` runs the same code on a small LLaDA-shaped model (the CPU rehearsal).

    python scripts/gpu/step_times.py --out step_times.json --time-limit 75
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

from quicksilver.loading.families.llada import model_config  # noqa: E402
from quicksilver.model import Transformer  # noqa: E402
from quicksilver.sampling.captured import CapturedStep  # noqa: E402

# GSAI-ML/LLaDA-8B-Base's config.json, the keys that set the shape.
LLADA_8B = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
            "embedding_size": 126464, "vocab_size": 126464, "max_sequence_length": 4096, "rope_theta": 500000.0,
            "rope_full_precision": True, "weight_tying": False}
# The rehearsal's tiny shape: LLaDA's special ids (126336, 126081) lie outside a 1,024-token vocabulary,
# which the config validation rightly refuses, so the tiny shape names its own.
TINY = dict(LLADA_8B, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128,
            embedding_size=1024, vocab_size=1024, mask_token_id=1000, eos_token_id=1001)
# Vendors' datasheets (SXM parts): HBM bandwidth in bytes/s, dense bf16 matrix rate in FLOP/s.
DATASHEET = {"H200": (4.8e12, 989e12), "H100 PCIe": (2.0e12, 756e12), "H100": (3.35e12, 989e12)}


def datasheet(name: str) -> tuple[str, float, float] | None:
    for key, (bw, flops) in DATASHEET.items():
        if key in name:
            return key, bw, flops
    return None


class Timer:
    """Median milliseconds of a callable: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int, warmup: int = 2) -> dict:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return {"ms": statistics.median(times), "ms_min": min(times), "runs": repeats}


def measured_ceilings(device: torch.device, timer: Timer) -> dict:
    """Copy bandwidth (bytes read + written per second) and the bf16 matrix rate on random data."""
    if device.type != "cuda":
        return {}
    a = torch.empty(2**30, dtype=torch.uint8, device=device)  # 1 GiB each way
    b = torch.empty_like(a)
    copy = timer(lambda: b.copy_(a), 10)
    del a, b
    n = 8192
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = timer(lambda: x @ y, 10, warmup=3)
    return {"copy_bytes_per_s": 2 * 2**30 / (copy["ms"] / 1e3), "matmul_bf16_flops": 2 * n**3 / (mm["ms"] / 1e3),
            "how": "1 GiB device-to-device copy (read + write counted); 8192^3 bf16 matmul on random data; medians of 10"}


def build_model(raw: dict, device: torch.device) -> Transformer:
    """Random bf16 weights made on the device (an 8B model would take minutes to initialise on a CPU)."""
    cfg = model_config(raw)
    with torch.device("meta"):
        model = Transformer(cfg).to(torch.bfloat16)  # no memory yet: allocated once, in bf16, on the device
    model = model.to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def pass_cost(model: Transformer, context: int, queries: int, head_rows: int) -> dict:
    """Bytes read and FLOPs of one pass at batch 1 (bf16)."""
    cfg = model.config
    embed = model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    body = model.num_parameters() - embed - head
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * context
    keys = context + queries
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * queries * keys
    return {"weight_bytes": 2 * (body + head), "kv_bytes": 2 * kv, "bytes": 2 * (body + head + kv),
            "flops": 2 * body * queries + 2 * head * head_rows + attention}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=["llada-8b", "tiny"], default="llada-8b")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=75.0, help="seconds; later variants are skipped past it")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="time torch.compile of the cached steps (auto: on a GPU only)")
    args = parser.parse_args()
    t0 = time.time()
    if os.environ.get("PHASE_DEADLINE"):  # scripts/train_gpu.sh: the phase's cap ends then (start-up counted)
        args.time_limit = min(args.time_limit, float(os.environ["PHASE_DEADLINE"]) - t0 - 2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    timer = Timer(device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    sheet = datasheet(name)
    result: dict = {"device": name, "torch": torch.__version__, "shape": args.shape, "batch": 1,
                    "datasheet": None if sheet is None else {"part": sheet[0], "hbm_bytes_per_s": sheet[1],
                                                             "bf16_dense_flops": sheet[2]},
                    "passes": {}, "skipped": []}

    def save() -> None:
        result["elapsed_s"] = round(time.time() - t0, 1)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)

    result["measured"] = measured_ceilings(device, timer)
    model = build_model(LLADA_8B if args.shape == "llada-8b" else TINY, device)
    result["parameters"] = model.num_parameters()
    result["weight_bytes_bf16"] = 2 * model.num_parameters()
    save()
    total, lo = args.prompt + args.gen, args.prompt
    # name: (context, queries, head rows)
    passes = {"ar_step": (total - 1, 1, slice(None)),
              "dual_step": (total - args.block, args.block, slice(None)),
              "full_canvas": (0, total, slice(lo, lo + args.block))}
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    vocab = model.config.vocab_size
    inputs = {}
    for pname, (context, queries, rows) in passes.items():
        cost = pass_cost(model, context, queries, queries if rows == slice(None) else args.block)
        entry = result["passes"][pname] = {"context": context, "queries": queries, **cost, "variants": {}}
        bw = [("datasheet", sheet[1], sheet[2])] if sheet else []
        if result["measured"]:
            bw.append(("measured", result["measured"]["copy_bytes_per_s"], result["measured"]["matmul_bf16_flops"]))
        entry["floors_ms"] = {src: {"bandwidth": cost["bytes"] / b * 1e3, "compute": cost["flops"] / f * 1e3}
                              for src, b, f in bw}
        ids = torch.randint(0, vocab, (1, queries), device=device)
        positions = torch.arange(context, context + queries, device=device)[None]
        inputs[pname] = (ids, positions)
    reference: dict[str, torch.Tensor] = {}

    def agreement(pname: str, vname: str, out: torch.Tensor) -> dict:
        """Logits of a variant against the eager pass on the same inputs (a graph replays the same kernels)."""
        if vname == "eager":
            reference[pname] = out.detach().float().clone()
            return {}
        if pname not in reference:
            return {}
        diff = (out.float() - reference[pname]).abs().max().item()
        return {"identical_to_eager": diff == 0.0, "max_abs_diff_vs_eager": diff}

    # Every pass eagerly and as a graph first; compiling (slow to start) last, the dual step first.
    tasks = [(p, v) for p in passes for v in ("eager", "graph")]
    if compile_on:
        tasks += [("dual_step", "compiled"), ("ar_step", "compiled")]
    for pname, vname in tasks:
        context, queries, rows = passes[pname]
        entry, (ids, positions) = result["passes"][pname], inputs[pname]
        if time.time() - t0 > args.time_limit:
            result["skipped"].append(f"{pname}/{vname}: time limit")
            continue
        graph, compiled = vname == "graph", vname == "compiled"
        try:
            start = time.time()
            step = CapturedStep(model, 1, context, queries, logits=rows, graph=graph and device.type == "cuda",
                                compile=compiled, warmup=2)
            step.run(ids, positions)  # the first call compiles when compiled
            if device.type == "cuda":
                torch.cuda.synchronize()
            setup_s = time.time() - start
            timing = timer(lambda: step.run(ids, positions), args.repeats)
            entry["variants"][vname] = {**timing, "setup_s": round(setup_s, 2), "ran_as_graph": step.graph is not None,
                                        **agreement(pname, vname, step.run(ids, positions))}
            if compiled and time.time() - t0 < args.time_limit:
                step.capture()
                entry["variants"]["compiled+graph"] = {**timer(lambda: step.run(ids, positions), args.repeats),
                                                       "ran_as_graph": True,
                                                       **agreement(pname, "compiled+graph", step.run(ids, positions))}
            del step
        except Exception as e:  # a failed variant is a result too; the others still run
            entry["variants"][vname] = {"error": f"{type(e).__name__}: {e}"[:400]}
        for vrec in entry["variants"].values():
            if "ms" in vrec:
                vrec["x_floor"] = {src: round(vrec["ms"] / max(f["bandwidth"], f["compute"]), 3)
                                   for src, f in entry["floors_ms"].items()}
        save()
    dual = result["passes"]["dual_step"]["variants"]
    best = min((v["ms"] for v in dual.values() if "ms" in v), default=None)
    if best:
        # Tokens/s of a decoder that commits k tokens per cached step (k: tokens per forward).
        result["projected_tokens_per_s_at_tokens_per_forward"] = {k: round(k * 1e3 / best, 1) for k in (1, 2, 3, 4, 6, 8)}
    ar = result["passes"]["ar_step"]["variants"]
    best_ar = min((v["ms"] for v in ar.values() if "ms" in v), default=None)
    if best_ar:
        result["ar_tokens_per_s"] = round(1e3 / best_ar, 1)
    save()


if __name__ == "__main__":
    main()
