"""A short probe of the other drafter design, TiDAR (arXiv 2511.08923): one model that drafts and verifies.

Why this exists: the verified-decoding issue asked to prototype both drafter designs and ship the
better.  The draft head (``quicksilver.drafter``) was trained for real; this script trains a TiDAR-style
model for a few CPU minutes from the same starting point (the AR twin) on the same data (the head's pool of
the twin's own greedy continuations) and reports, at equal training CPU time:

* drafts accepted per round (greedy, the first k masked positions against the twin's greedy tokens),
  the same measure the head's training log reports as ``accept_8``;
* the AR validation loss of the model's causal half against the twin's (TiDAR must not lose the twin);
* the cost of one TiDAR round on this CPU: a cached pass over k + 1 verify positions plus k + 1 blocks
  of k pre-drafts (one per possible acceptance length), against a twin pass over k + 1 positions.

Training input per window x (length L): ``[x | M * L]``; the clean half is causal; masked block b
(positions b*k .. b*k + k - 1 of the copy) sees the clean tokens before b*k and itself, bidirectionally;
a masked position predicts its own token.  Loss (L_AR + L_diff) / 2 (TiDAR's a = 1).

    python benchmarks/tidar_probe.py --pool runs/coder-tiny-drafter/pool.safetensors --minutes 4
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from quicksilver.checkpoint import load_model
from quicksilver.model import KVCache, rotary_cos_sin


def run_layers(model, x_ids, positions, mask):
    x = model.embed_tokens(x_ids)
    cos, sin = rotary_cos_sin(positions, model.config.head_dim, model.config.rope_theta, x.dtype)
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, mask, False, None, i)
    return model.norm(x)


def tidar_mask(length: int, k: int) -> torch.Tensor:
    """(1, 1, 2L, 2L) True = may attend: clean causal; masked block b sees clean < b*k and its block."""
    idx = torch.arange(length)
    clean = idx[None, :] <= idx[:, None]
    block = idx // k
    masked_sees_clean = idx[None, :] < (block * k)[:, None]
    masked_sees_masked = block[None, :] == block[:, None]
    top = torch.cat([clean, torch.zeros(length, length, dtype=torch.bool)], dim=1)
    bottom = torch.cat([masked_sees_clean, masked_sees_masked], dim=1)
    return torch.cat([top, bottom], dim=0)[None, None]


def losses(model, windows, k, prompt_len):
    b, length = windows.shape
    mask_id = model.config.mask_token_id
    ids = torch.cat([windows, torch.full_like(windows, mask_id)], dim=1)
    pos = torch.arange(length).repeat(2).expand(b, -1)
    hidden = run_layers(model, ids, pos, tidar_mask(length, k))
    logits = model.head(hidden)
    ar = F.cross_entropy(logits[:, :length - 1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    draft_logits = logits[:, length:]
    diff = F.cross_entropy(draft_logits.reshape(-1, logits.shape[-1]), windows.reshape(-1))
    # acceptance: blocks that start inside the twin's continuation (their targets are its greedy tokens)
    starts = torch.arange(0, length - k + 1, k)
    starts = starts[starts >= prompt_len]
    hits = (draft_logits.argmax(-1) == windows)
    runs = torch.stack([hits[:, s:s + k].long().cumprod(-1).sum(-1) for s in starts], dim=1).float()
    return ar, diff, runs.mean()


def cached_pass_ms(model, n: int, past: int = 200, reps: int = 15) -> float:
    ids = torch.randint(10, 8000, (1, past))
    cache = KVCache(model.config.num_hidden_layers)
    with torch.no_grad():
        model(ids, cache=cache)
        times = []
        for _ in range(reps):
            cache.crop(past)
            t0 = time.perf_counter()
            model(torch.randint(10, 8000, (1, n)), cache=cache)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", required=True, help="pool.safetensors of a drafter run (train and val windows)")
    ap.add_argument("--target", default="coder-tiny-ar")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget in CPU minutes of this process")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pools = load_file(args.pool)
    train, val = pools["train"], pools["val"][:16]
    model, _ = load_model(args.target, dtype=torch.float32)
    twin, _ = load_model(args.target, dtype=torch.float32)
    k = args.k

    def evaluate(m):
        with torch.no_grad():
            ar, diff, acc = zip(*(losses(m, val[i:i + 4], k, args.prompt_len) for i in range(0, len(val), 4)))
        return {"ar_loss": float(torch.stack(ar).mean()), "diff_loss": float(torch.stack(diff).mean()),
                f"accept_{k}": float(torch.stack(acc).mean())}

    with torch.no_grad():
        twin_ar = statistics.mean(float(F.cross_entropy(twin(val[i:i + 4, :-1]).reshape(-1, twin.config.vocab_size),
                                                         val[i:i + 4, 1:].reshape(-1))) for i in range(0, len(val), 4))
    start = evaluate(model)
    print(f"start: {start}; twin AR loss on these windows {twin_ar:.4f}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    gen = torch.Generator().manual_seed(0)
    cpu0, step, history = time.process_time(), 0, []
    while time.process_time() - cpu0 < args.minutes * 60:
        rows = torch.randint(0, train.shape[0], (args.batch,), generator=gen)
        ar, diff, _ = losses(model, train[rows], k, args.prompt_len)
        ((ar + diff) / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        if step % 10 == 0:
            print(f"step {step}: ar {float(ar):.3f} diff {float(diff):.3f} cpu {time.process_time() - cpu0:.0f} s",
                  flush=True)
    model.eval()
    end = evaluate(model)
    cpu_s = time.process_time() - cpu0
    cost = {"twin_pass_ms_n1": cached_pass_ms(twin, 1), f"twin_pass_ms_n{k + 1}": cached_pass_ms(twin, k + 1),
            f"tidar_round_ms_n{(k + 1) * (k + 1)}": cached_pass_ms(twin, (k + 1) * (k + 1))}
    result = {"k": k, "steps": step, "windows_seen": step * args.batch,
              "tokens_seen": step * args.batch * train.shape[1], "cpu_s": cpu_s,
              "twin_ar_loss": twin_ar, "start": start, "end": end, "cost_ms": cost}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
