"""Does ``torch.compile`` pay for a training run of a given length?  Measured, not assumed.

Times training steps of the run's own model, batch and objective eagerly, then with each block
compiled (``train.compile_blocks``, what ``train.compile = true`` does): the first compiled step
(compile time) and the steady steps after it.  Compiling pays when, within ``--budget-s`` seconds of
training, ``(budget - compile) / compiled step`` steps beat ``budget / eager step`` steps by 2%.
The training process compiles again, but Inductor's on-disk caches (written here) make that a cache
hit; the decision charges the full compile time anyway.

The JSON is written after the eager measurement too (decision: eager), so when the probe is killed
by its time limit in the middle of compiling, the run falls back to eager with the reason recorded.

    python scripts/gpu/compile_probe.py configs/coder-small-ar.toml --data DIR --budget-s 150 --out probe.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

from quicksilver.cli import _parse_overrides  # noqa: E402  (the --set spelling of quicksilver train)
from quicksilver.data import ShardDataset  # noqa: E402
from quicksilver.tokenizer import Tokenizer  # noqa: E402
from quicksilver.training.distributed import pick_device  # noqa: E402
from quicksilver.training.train import (_loss_terms, build_model, compile_blocks, load_run_config,  # noqa: E402
                                        make_optimizer, run_model_config, step_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE as for quicksilver train")
    parser.add_argument("--budget-s", type=float, required=True, help="training seconds the decision is for")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    t0 = time.time()
    run = load_run_config(args.config, _parse_overrides(args.sets) | {"train.data": args.data, "train.init_from": ""})
    cfg = run.train
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    tokenizer = Tokenizer.from_file(Path(cfg.data) / "tokenizer.json")
    mcfg = run_model_config(cfg, run.model, tokenizer)
    model = build_model(cfg, mcfg, tokenizer, device, log=lambda *a: None)
    opt = make_optimizer(model, cfg)
    data = ShardDataset(cfg.data, "train")
    result: dict = {"device": str(device), "objective": cfg.objective, "batch": cfg.batch_size, "seq_len": cfg.seq_len,
                    "parameters": model.num_parameters(), "budget_s": args.budget_s}

    def save() -> None:
        result["elapsed_s"] = round(time.time() - t0, 1)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)

    def one(step: int) -> float:
        start = time.perf_counter()
        tokens = data.batch(step, cfg.batch_size, cfg.seq_len, cfg.seed).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            loss, _, _ = _loss_terms(model, step_loss, tokens, cfg, mcfg, step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # waits for the device
        return time.perf_counter() - start

    for s in range(2):
        one(s)
    eager = statistics.median(one(s) for s in range(2, 2 + args.steps))
    result |= {"eager_step_s": eager, "compile": False,
               "reason": "compiling was not measured (the probe stopped before it finished)"}
    save()
    compile_blocks(model, log=lambda *a: None)
    try:
        compile_s = one(100)
    except Exception as e:  # compiling failed outright: eager, with the reason
        result["reason"] = f"torch.compile failed: {type(e).__name__}: {e}"[:400]
        save()
        return
    compiled = statistics.median(one(s) for s in range(101, 101 + args.steps))
    steps_eager = args.budget_s / eager
    steps_compiled = max(0.0, args.budget_s - compile_s) / compiled
    result |= {"compile_s": compile_s, "compiled_step_s": compiled, "steps_in_budget": {
        "eager": round(steps_eager), "compiled": round(steps_compiled)},
        "compile": steps_compiled > 1.02 * steps_eager}
    result["reason"] = (f"{steps_compiled:.0f} compiled steps vs {steps_eager:.0f} eager in {args.budget_s:.0f} s "
                        f"(compile {compile_s:.1f} s, step {compiled * 1e3:.1f} vs {eager * 1e3:.1f} ms)")
    save()


if __name__ == "__main__":
    main()
