"""Controllable generation, measured side by side in one run (docs/control.md):

1. correction while refining at equal forward passes, in the block decoder (``sampling.fill``, the
   tasks as one batch): HumanEval single-line infilling (exact match and the share of infilled
   programs that parse), and generative perplexity of completions under the AR twin — without
   correction, with remasking, with token-to-token editing, with both;
2. structured output over the 50 sample schemas: validity and tokens/s of template filling (diffusion),
   constrained decoding of the twin from the same template, and unconstrained generation of both.

    OMP_NUM_THREADS=1 python benchmarks/control_bench.py --tasks 200 --prompts 48 --out docs/eval/control.json
"""
from __future__ import annotations

import argparse
import ast
import json
import statistics
import time
from pathlib import Path

import torch

from quicksilver import load
from quicksilver.control.samples import sample_schemas
from quicksilver.control.schema import validate_output
from quicksilver.control.structured import compile_layout
from quicksilver.eval.humaneval import load_problems
from quicksilver.eval.infill import boundary, build_tasks, select, trim_fill
from quicksilver.sampling import Canvas, DecodePolicy, Span, fill

BUDGET = 24  # single-line infill budget (the evaluation's default)
GEN = 32  # completion length for generative perplexity
CACHE = "dual"  # the fast decoder's cache: each step runs the block only (the block is one span here)

SETTINGS = [  # (label, policy fields); every row spends at most the same forward passes
    ("none", dict(steps=12)),
    ("remask 0.25", dict(steps=12, correct="remask", remask_share=0.25)),
    ("remask 0.5", dict(steps=12, correct="remask", remask_share=0.5)),
    ("edit (10 + ≤2 passes)", dict(steps=10, correct="edit", edit_passes=2, edit_threshold=0.9)),
    ("none (10 passes)", dict(steps=10)),
    ("both (10 + ≤2)", dict(steps=10, correct="both", remask_share=0.25, edit_passes=2, edit_threshold=0.9)),
]


def infill_run(lm, tasks, fields) -> dict:
    """All tasks as one batch of canvases [prefix | 24 masks | suffix] through the block decoder."""
    shown = [boundary(t) for t in tasks]
    canvases = [Canvas.infill(lm.encode(p), BUDGET, lm.encode(s)) for p, s in shown]
    result = fill(lm.model, canvases, DecodePolicy(max_new_tokens=BUDGET, block_length=BUDGET, cache=CACHE, **fields))
    exact = parses = 0
    for task, (prefix, suffix), ids in zip(tasks, shown, result.ids):
        middle = trim_fill(lm.decode(ids), suffix, "single-line")
        exact += middle.strip() == task.middle.strip()
        try:
            ast.parse(prefix + middle + suffix)
            parses += 1
        except SyntaxError:
            pass
    n = len(tasks)
    return {"exact_match": exact / n, "parse_rate": parses / n, "mean_passes": statistics.mean(result.forwards)}


@torch.no_grad()
def gen_ppl(lm, twin, prompts, fields) -> dict:
    """Completions of GEN tokens (one block) as one batch; their NLL under the AR twin."""
    steps = fields["steps"] * GEN // BUDGET
    ids = [lm.encode(p) for p in prompts]
    result = fill(lm.model, [Canvas.of(p, Span(GEN, may_end_early=False)) for p in ids],
                  DecodePolicy(max_new_tokens=GEN, block_length=GEN, cache=CACHE, **{**fields, "steps": steps}))
    nll, count = 0.0, 0
    for prompt, gen in zip(ids, result.ids):
        x = torch.tensor([prompt + gen])
        logp = twin.model(x).float().log_softmax(-1)[0, len(prompt) - 1:-1]
        nll -= float(logp.gather(-1, torch.tensor(gen)[:, None]).sum())
        count += len(gen)
    return {"gen_ppl": float(torch.tensor(nll / count).exp()), "mean_passes": statistics.mean(result.forwards)}


def structured_run(lm, schemas, constrained: bool) -> dict:
    valid, rates, passes_per_token = 0, [], []
    for i, schema in enumerate(schemas):
        prompt = f"# a JSON value for the schema {json.dumps(schema)}\nvalue = "
        start = time.perf_counter()
        if constrained:
            result = lm.generate_json(prompt, schema, string_tokens=4, integer_tokens=2)
            text, tokens, nfe = result.text, result.tokens, result.nfe
        else:
            lay = compile_layout(schema, lm.tokenizer, lm.model.config)
            out = lm.generate(prompt, max_new_tokens=len(lay.ids) + 8, block_length=len(lay.ids) + 8,
                              stop_at_eos=True)
            text, tokens, nfe = out.text, out.generated_tokens, out.nfe
        seconds = time.perf_counter() - start
        try:
            value, _ = json.JSONDecoder().raw_decode(text.lstrip())
            validate_output(json.dumps(value), schema)
            valid += 1
        except Exception:
            pass
        rates.append(tokens / seconds)
        passes_per_token.append(nfe / max(1, tokens))
    return {"valid": valid / len(schemas), "tokens_per_s": statistics.median(rates),
            "passes_per_token": statistics.median(passes_per_token)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm, twin = load("coder-tiny", device="cpu"), load("coder-tiny-ar", device="cpu")
    problems = load_problems()
    all_tasks = build_tasks(problems, "single-line")
    tasks = select(all_tasks, args.tasks)
    prompts = [p["prompt"] for p in load_problems(args.prompts).values()]
    report = {"tasks": len(tasks), "of": len(all_tasks), "prompts": len(prompts), "correction": [], "structured": {}}
    print(f"correction at equal passes ({CACHE} cache, one block): {len(tasks)} of {len(all_tasks)} single-line "
          f"infill tasks (budget {BUDGET}); gen-PPL under the twin over {len(prompts)} HumanEval prompts ({GEN} tokens)")
    print("| setting | infill exact match | infilled program parses | passes (infill) | gen-PPL (twin) | passes (gen) |")
    print("|---|---|---|---|---|---|")
    for label, fields in SETTINGS:
        a, b = infill_run(lm, tasks, fields), gen_ppl(lm, twin, prompts, fields)
        report["correction"].append({"setting": label, **fields, **a, **{"gen_" + k: v for k, v in b.items()}})
        print(f"| {label} | {a['exact_match']:.3f} | {a['parse_rate']:.3f} | {a['mean_passes']:.1f} | "
              f"{b['gen_ppl']:.1f} | {b['mean_passes']:.1f} |", flush=True)
    schemas = sample_schemas(50)
    print("\nstructured output over 50 sample schemas (string budget 4, integer 2 tokens)")
    print("| system | valid | tokens/s (median) | forward passes per output token |")
    print("|---|---|---|---|")
    for label, model, constrained in (("coder-tiny, template filling", lm, True),
                                      ("coder-tiny-ar, constrained decoding (same template)", twin, True),
                                      ("coder-tiny, unconstrained", lm, False),
                                      ("coder-tiny-ar, unconstrained", twin, False)):
        r = structured_run(model, schemas, constrained)
        report["structured"][label] = r
        print(f"| {label} | {r['valid']:.0%} | {r['tokens_per_s']:.0f} | {r['passes_per_token']:.2f} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
