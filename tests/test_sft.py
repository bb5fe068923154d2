"""SFT: chat-rendered prompts never masked, EOS-padded answers learned, and the code instruction set."""
import json
import sysconfig
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from quicksilver.chat import render_chat
from quicksilver.cli import app
from quicksilver.config import ConfigError
from quicksilver.data.sft_code import INSTRUCTION, examples_from_source
from quicksilver.diffusion import sft_diffusion_loss
from quicksilver.model import Transformer
from quicksilver.training.sft import SFTDataset, encode_example, parse_example, sft_step_loss
from quicksilver.training.train import load_run_config, train

from tests.conftest import tiny_config

SOURCE = '''
import os


def documented(a, b=2):
    """Add a and b, then double."""
    total = a + b
    return 2 * total


def one_liner(x):
    """Too short to teach anything."""
    return x


def undocumented(x):
    y = x + 1
    return y


class Box:
    @staticmethod
    def scale(v, k):
        """Scale v by k."""
        out = v * k
        return out
'''


def test_documented_functions_become_signature_docstring_to_body():
    examples = {name: (prompt, response) for name, prompt, response in examples_from_source(SOURCE)}
    assert set(examples) == {"documented", "Box.scale"}
    prompt, response = examples["documented"]
    assert prompt == (f"{INSTRUCTION}\n\n```python\ndef documented(a, b=2):\n"
                      f'    """Add a and b, then double."""\n')
    assert response == "    total = a + b\n    return 2 * total\n```"
    prompt, response = examples["Box.scale"]
    assert "@staticmethod\ndef scale(v, k):" in prompt  # methods are dedented to top level
    assert response == "    out = v * k\n    return out\n```"


def test_sft_from_code_cli_is_deterministic_and_reports_counts(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text(SOURCE)
    (src / "pkg" / "b.py").write_text(SOURCE.replace("documented", "other"))
    runner = CliRunner()
    outs = []
    for name in ("one.jsonl", "two.jsonl"):
        result = runner.invoke(app, ["data", "sft-from-code", "--no-stdlib", "--folder", str(src),
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        outs.append((tmp_path / name).read_text())
    assert outs[0] == outs[1]
    records = [json.loads(line) for line in outs[0].splitlines()]
    # Box.scale is the same in both files: kept once.
    assert len(records) == 3 and {r["split"] for r in records} <= {"train", "val"}
    assert "3 examples" in result.output and "1 duplicates" in result.output
    empty = runner.invoke(app, ["data", "sft-from-code", "--no-stdlib", "--out", str(tmp_path / "x.jsonl")])
    assert empty.exit_code == 2 and "error:" in empty.output


def test_both_jsonl_formats_render_with_the_chat_template():
    a = parse_example({"prompt": "Write hello.", "response": "print('hello')"}, 1)
    assert a.prompt == render_chat([{"role": "user", "content": "Write hello."}], add_generation_prompt=True)
    assert a.prompt.endswith("<|assistant|>\n") and a.response == "print('hello')"
    b = parse_example({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello."}]}, 2)
    assert b.prompt.startswith("<|system|>\nBe brief.\n<|user|>\nHi\n") and b.response == "Hello."
    for bad in ({"prompt": "no response"}, {"messages": [{"role": "user", "content": "x"}]}, [1, 2],
                {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}):
        with pytest.raises(ConfigError, match="line 7"):
            parse_example(bad, 7)


def test_answers_end_with_eos_and_are_padded_with_eos(tiny_tokenizer):
    ex = parse_example({"prompt": "Say hi.", "response": "hi there"}, 1)
    ids, plen = encode_example(ex, tiny_tokenizer, 64)
    prompt, answer = tiny_tokenizer.encode(ex.prompt), tiny_tokenizer.encode(ex.response)
    assert len(ids) == 64 and plen == len(prompt) and ids[:plen] == prompt
    assert ids[plen:plen + len(answer)] == answer
    assert set(ids[plen + len(answer):]) == {tiny_tokenizer.eos_id}  # EOS, then EOS padding
    assert encode_example(ex, tiny_tokenizer, plen + len(answer)) is None  # no room for EOS: dropped


def test_prompt_is_never_masked_and_carries_no_loss(tiny_tokenizer):
    model = Transformer(tiny_config(tiny_tokenizer))
    model.reset_parameters(seed=0)
    seen = []
    original = model.hidden_states

    def recording(xt, **kw):
        seen.append(xt.clone())
        return original(xt, **kw)

    model.hidden_states = recording
    x0 = torch.randint(6, tiny_tokenizer.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    x0[:, 24:] = tiny_tokenizer.eos_id  # EOS padding
    plen = torch.tensor([3, 10, 17, 30])
    prompt = torch.arange(32)[None] < plen[:, None]
    mask_id = tiny_tokenizer.mask_id
    gen = torch.Generator().manual_seed(0)
    for step in range(20):
        sft_step_loss(model, (x0, plen), gen, model.config)
        masked = seen[-1] == mask_id
        assert not masked[prompt].any()
    assert (seen[-1] == mask_id)[~prompt].any()
    # At t = 1 every answer position (EOS padding included) is masked; the loss is the mean over
    # rows of the answer's CE per answer token, and changing prompt logits' targets cannot move it.
    out = sft_diffusion_loss(model, x0, plen, mask_id, None, times=torch.ones(4), draws=torch.zeros(4, 32))
    assert torch.equal(seen[-1] == mask_id, ~prompt)
    with torch.no_grad():
        logits = model.head(original(seen[-1]))
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    expected = ((ce * ~prompt).sum(1) / (~prompt).sum(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.tokens == int((~prompt).sum())


def test_sft_training_run(tmp_path, tiny_dataset, tiny_tokenizer):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for f in sorted(stdlib.glob("json/*.py")) + sorted(stdlib.glob("email/*.py")):
        for _, prompt, response in examples_from_source(f.read_text()):
            lines.append(json.dumps({"prompt": prompt, "response": response}))
    lines.append(json.dumps({"messages": [{"role": "user", "content": "Say ok."},
                                          {"role": "assistant", "content": "ok"}]}))
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert SFTDataset(data, tiny_tokenizer, 256, "train").num_examples > 5
    cfg = tmp_path / "sft.toml"
    cfg.write_text(f"""
[model]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 256

[train]
objective = "sft"
data = "{tiny_dataset}"
sft_data = "{data}"
out_dir = "{tmp_path / 'run'}"
seq_len = 256
batch_size = 4
max_steps = 12
lr = 3e-3
warmup_steps = 2
eval_every = 6
eval_batches = 2
eval_time_samples = 1
save_every = 12
threads = 1
""")
    state = train(load_run_config(cfg), progress=False, log=lambda *_: None)
    vals = [h["val_loss"] for h in state["history"]]
    assert state["step"] == 12 and len(vals) == 2 and vals[1] < vals[0]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="sft_data"):
        load_run_config(cfg, {"train.sft_data": ""})
