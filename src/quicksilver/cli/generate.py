"""`quicksilver generate` and `quicksilver models`."""
from __future__ import annotations

from typing import Optional

import typer

from .common import UserError, app, console, threads_option, user_errors


@app.command()
@user_errors
def generate(
    prompt: str = typer.Argument(..., help="Text to complete, e.g. 'def fib(n):'."),
    model: str = typer.Option("coder-tiny", "--model", "-m",
                              help="Bundled model name, checkpoint folder (Quicksilver, LLaDA, Dream, DiffusionGemma) "
                                   "or Hugging Face Hub id."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Most tokens to generate (default 128, or the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Diffusion forward passes in all (default: one per token); "
                                                   "given alone it selects the fixed rule."),
    block_length: Optional[int] = typer.Option(None, help="Diffusion block length: positions decoded together "
                                                          "(default 32, or the preset's)."),
    temperature: Optional[float] = typer.Option(None, help="0 is greedy (default 0, or the preset's)."),
    top_k: Optional[int] = typer.Option(None, help="Sample among the k most likely tokens (default 0: off)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (default 1)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
    preset: Optional[str] = typer.Option(None, help="A preset or setting name: fast (the default of Quicksilver's "
                                                    "models), reference (one token per pass), quicksilver, llada, "
                                                    "llada-pure, dream-entropy, dream-margin, dream-maskgit-plus, or "
                                                    "e.g. dual-inc+thr0.7 (docs/serving.md; default: the model's own)."),
    commit: Optional[str] = typer.Option(None, help="Diffusion commit rule: fixed (the reference schedule), threshold, "
                                         "factor or entropy (commit as many positions per step as the model is sure of)."),
    threshold: Optional[float] = typer.Option(None, help="--commit threshold: commit every position scored above this "
                                                         "(the fast preset's 0.3, else 0.9)."),
    factor: Optional[float] = typer.Option(None, help="--commit factor: Fast-dLLM's factor (default 1)."),
    entropy_bound: Optional[float] = typer.Option(None, help="--commit entropy: summed entropy (nats) per step "
                                                             "(default 0.5)."),
    score: Optional[str] = typer.Option(None, help="How positions are ranked: probability, margin or entropy."),
    schedule: Optional[str] = typer.Option(None, help="How the fixed rule shares a block out over its steps: "
                                                      "linear (LLaDA) or dream."),
    score_tempered: Optional[bool] = typer.Option(None, "--score-tempered/--no-score-tempered",
                                                  help="Rank positions on the tempered distribution (Dream)."),
    cache: Optional[str] = typer.Option(None, help="Diffusion KV cache: none, prefix or dual."),
    refresh: Optional[str] = typer.Option(None, help="How a cached block starts: full or incremental."),
    window: Optional[int] = typer.Option(None, help="Masked positions after the block the model sees (default: all)."),
    early_stop: Optional[bool] = typer.Option(None, "--early-stop/--no-early-stop",
                                              help="Stop as soon as end of text is final (no pass on trailing padding)."),
    correct: Optional[str] = typer.Option(None, help="Correction while refining (diffusion): none, remask, edit or "
                                                      "both (docs/control.md)."),
    remask_share: Optional[float] = typer.Option(None, help="--correct remask: most of a block's committed tokens "
                                                            "one step may reopen (default 0.25)."),
    edit_threshold: Optional[float] = typer.Option(None, help="--correct edit: replace a committed token when the "
                                                              "model's best token differs with this probability (0.9)."),
    edit_passes: Optional[int] = typer.Option(None, help="--correct edit: most extra forward passes per block (2)."),
    stop_at_eos: Optional[bool] = typer.Option(None, "--stop-at-eos/--no-stop-at-eos",
                                               help="End at end of text (default on)."),
    chat: bool = typer.Option(False, "--chat", help="Send PROMPT as a user message through the model's chat template."),
    live: bool = typer.Option(True, "--live/--no-live", help="Show the canvas being refined (on a terminal; output "
                                                            "to a file or pipe gets the final text only)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    threads: Optional[int] = threads_option(),
):
    """Complete PROMPT, showing the diffusion canvas fill in step by step.

    Options left out come from --preset, else from the model's default decoding (for Quicksilver's
    diffusion models the `fast` preset: DualCache, incremental refresh, threshold 0.3, early stop; for
    LLaDA and Dream their reference sampler; `--preset reference` is the reference sampler, one token
    per forward pass; --steps alone selects the fixed schedule)."""
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise UserError("--max-new-tokens must be a positive integer")
    if not prompt.strip():
        raise UserError("the prompt is empty")
    from ..threads import resolve_threads

    resolve_threads(threads)  # a bad count or QUICKSILVER_THREADS fails before anything heavy is imported
    from ..prompting import text_problem

    problem = text_problem(prompt)  # e.g. bytes that were not UTF-8 reach Python as lone surrogates
    if problem:
        raise UserError(f"the prompt is not valid text: it {problem}")
    from ..sampling.policy import resolve_policy
    from ..sampling.types import DecodePolicy

    options = dict(max_new_tokens=max_new_tokens, steps=steps, block_length=block_length, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, commit=commit, threshold=threshold, factor=factor,
                   entropy_bound=entropy_bound, score=score, schedule=schedule, score_tempered=score_tempered,
                   cache=cache, refresh=refresh, window=window, early_stop=early_stop, stop_at_eos=stop_at_eos,
                   correct=correct, remask_share=remask_share, edit_threshold=edit_threshold,
                   edit_passes=edit_passes)
    # Check the options before anything is loaded or drawn, so a bad option prints only its error.
    resolve_policy(preset, base=None if preset else DecodePolicy(), **options)
    from ..device import resolve_device
    from ..threads import apply_threads

    device = resolve_device(device)
    apply_threads(threads)
    from ..api import load_backend

    lm = load_backend(model, device=device)
    policy = resolve_policy(preset, base=None if preset else lm.default_policy, diffusion=lm.is_diffusion, **options)
    text = lm.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
    ids = [lm.encode(text)]
    if live and console.is_terminal:
        from ..live import CanvasView

        with CanvasView(lm.tokenizer, prompt, console) as view:
            result = lm.generate_ids(ids, policy, on_step=view.update)
            view.finish(result)
    else:  # a file or a pipe gets plain lines: no redrawn frames, no escape codes
        result = lm.generate_ids(ids, policy)
        console.print(prompt + ("\n" if chat else "") + result.text, highlight=False, markup=False, soft_wrap=True)
    kind = "diffusion" if lm.is_diffusion else "autoregressive"
    console.print(f"[dim]{lm.name} ({kind}): {result.stats_line()}[/]", highlight=False, soft_wrap=True)


@app.command()
def models():
    """List the bundled models."""
    from ..config import ModelConfig
    from ..loading.bundled import BUNDLED_DIR, bundled_models

    for name in bundled_models():
        cfg = ModelConfig.load(BUNDLED_DIR / name / "config.json")
        kind = "autoregressive twin" if cfg.causal else "diffusion"
        console.print(f"{name}\t{kind}\t{cfg.num_hidden_layers} layers × {cfg.hidden_size}")


