"""`quicksilver generate` and `quicksilver models`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import UserError, app, console, err_console, user_errors


@app.command()
@user_errors
def generate(
    prompt: str = typer.Argument(..., help="Text to complete, e.g. 'def fib(n):'."),
    model: str = typer.Option("coder-tiny", "--model", "-m",
                              help="Bundled model name, checkpoint folder (Quicksilver, LLaDA, Dream, DiffusionGemma) "
                                   "or Hugging Face Hub id."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Most tokens to generate (default 128, or the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Diffusion forward passes in all (default: one per token)."),
    block_length: Optional[int] = typer.Option(None, help="Diffusion block length: positions decoded together "
                                                          "(default 32, or the preset's)."),
    temperature: Optional[float] = typer.Option(None, help="0 is greedy (default 0, or the preset's)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (default 1)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
    preset: Optional[str] = typer.Option(None, help="A family's reference sampler: llada, llada-pure, dream-entropy, "
                                                    "dream-margin, dream-maskgit-plus (default: the model's own)."),
    commit: Optional[str] = typer.Option(None, help="Diffusion commit rule: fixed (the reference schedule), threshold, "
                                         "factor or entropy (commit as many positions per step as the model is sure of)."),
    threshold: Optional[float] = typer.Option(None, help="--commit threshold: commit every position scored above this "
                                                         "(default 0.9)."),
    factor: Optional[float] = typer.Option(None, help="--commit factor: Fast-dLLM's factor (default 1)."),
    entropy_bound: Optional[float] = typer.Option(None, help="--commit entropy: summed entropy (nats) per step "
                                                             "(default 0.5)."),
    score: Optional[str] = typer.Option(None, help="How positions are ranked: probability, margin or entropy."),
    cache: Optional[str] = typer.Option(None, help="Diffusion KV cache: none, prefix or dual."),
    refresh: Optional[str] = typer.Option(None, help="How a cached block starts: full or incremental."),
    early_stop: Optional[bool] = typer.Option(None, "--early-stop/--no-early-stop",
                                              help="Stop as soon as end of text is final (no pass on trailing padding)."),
    chat: bool = typer.Option(False, "--chat", help="Send PROMPT as a user message through the model's chat template."),
    live: bool = typer.Option(True, "--live/--no-live", help="Show the canvas being refined."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
):
    """Complete PROMPT, showing the diffusion canvas fill in step by step.

    Options left out come from --preset, else from the model's default decoding (for LLaDA and Dream
    their reference sampler; for Quicksilver's diffusion models the threshold rule at 0.9 with early stop,
    as the server uses; --steps alone selects the fixed schedule)."""
    import dataclasses

    from ..api import load_backend
    from ..live import CanvasView
    from ..sampling import DecodePolicy, preset_policy

    if max_new_tokens is not None and max_new_tokens <= 0:
        raise UserError("--max-new-tokens must be a positive integer")
    if not prompt.strip():
        raise UserError("the prompt is empty")
    options = dict(max_new_tokens=max_new_tokens, steps=steps, block_length=block_length, temperature=temperature,
                   top_p=top_p, seed=seed, commit=commit, threshold=threshold, factor=factor,
                   entropy_bound=entropy_bound, score=score, cache=cache, refresh=refresh, early_stop=early_stop)
    given = {k: v for k, v in options.items() if v is not None}
    # Check the decoding options before anything is loaded or drawn, so a bad option prints only its error.
    (preset_policy(preset, **given) if preset is not None else dataclasses.replace(DecodePolicy(), **given)).validate()
    lm = load_backend(model, device=device)
    base = preset_policy(preset) if preset is not None else lm.default_policy
    if steps is not None and commit is None and base.commit in ("threshold", "factor"):
        given["commit"] = "fixed"  # these rules ignore a step count; asking for one means the fixed schedule
    policy = preset_policy(preset, **given) if preset is not None else dataclasses.replace(base, **given)
    policy.validate()
    text = lm.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
    ids = [lm.encode(text)]
    view = CanvasView(lm.tokenizer, prompt, console) if live else None
    if view:
        with view:
            result = lm.generate_ids(ids, policy, on_step=view.update)
            view.finish(result)
    else:
        result = lm.generate_ids(ids, policy)
        console.print(prompt + ("\n" if chat else "") + result.text, highlight=False, markup=False, soft_wrap=True)
    kind = "diffusion" if lm.is_diffusion else "autoregressive"
    console.print(f"[dim]{lm.name} ({kind}): {result.stats_line()}[/]", highlight=False, soft_wrap=True)



@app.command()
def models():
    """List the bundled models."""
    from ..checkpoint import BUNDLED_DIR, bundled_models
    from ..config import ModelConfig

    for name in bundled_models():
        cfg = ModelConfig.load(BUNDLED_DIR / name / "config.json")
        kind = "autoregressive twin" if cfg.causal else "diffusion"
        console.print(f"{name}\t{kind}\t{cfg.num_hidden_layers} layers × {cfg.hidden_size}")


