"""The benchmark end to end on tiny models (no timing assertions), and the transformers exporter."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from quicksilver.eval import bench, bench_report
from quicksilver.loading.checkpoint import save_pretrained
from quicksilver.model import Transformer
from tests.conftest import tiny_config

HAS_HF = importlib.util.find_spec("transformers") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
PROMPTS = bench.BUILTIN_PROMPTS[:3]


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("twins")
    paths = {}
    for name, causal in (("diffusion", False), ("ar", True)):
        model = Transformer(tiny_config(tiny_tokenizer, causal=causal))
        model.reset_parameters(seed=1)
        paths[name] = save_pretrained(model, tiny_tokenizer, root / name)
    return paths


def test_quality_proxies():
    assert bench.truncate_completion("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert bench.parses("def f():\n", "    return 1\n\nprint(f(")  # cut at the stop sequence
    assert not bench.parses("def f():\n", "    return (1\n")
    assert not bench.parses("def f():\n", "")
    # A docstring-only prompt parses alone: an empty or comment-only completion must not count.
    assert not bench.parses('def f():\n    """Doc."""\n', "\ndef g():\n    pass")
    assert not bench.parses('def f():\n    """Doc."""\n', "    # nothing\n")
    assert bench.parses('def f():\n    """Doc."""\n', "    return 2\n")


def test_bench_runs_end_to_end(twins, tmp_path):
    systems = ("reference", "dual", "prefix+thr0.9", "dual+thr0.5", "dual+factor2", "dual+entropy1", "dual-inc-w32+thr0.7", "dual-inc+fixed4",
               "ar-twin") + (("hf-llama",) if HAS_HF else ())
    cfg = bench.BenchConfig(diffusion_model=str(twins["diffusion"]), ar_model=str(twins["ar"]), prompts=PROMPTS,
                            max_new_tokens=16, block_length=8, batch_sizes=(1, 2), repeats=2, slow_repeats=2, warmup=1,
                            dtype="fp32", systems=systems, profile=True, checkpoints=(str(twins["diffusion"]),),
                            checkpoint_systems=("dual+thr0.9",), out_dir=str(tmp_path))
    logged = []
    result = bench.run_benchmark(cfg, log=logged.append)
    rows = {(r["system"], r["batch"]): r for r in result["results"]}
    assert set(rows) == {(s, b) for s in systems for b in (1, 2)}
    for r in rows.values():
        assert r["generated_tokens"] > 0 and r["tokens_per_second"] > 0 and len(r["seconds_all"]) == 2
        assert 0 <= r["parse_share"] <= 1 and r["nfe_per_call"] >= 1 and r["first_token_ms"] >= 0
        assert r["dtype"] == "fp32"  # fixed: "auto" times both, and bf16 rounding may split batch from single
    assert rows[("reference", 1)]["identical_share"] == 1.0
    assert rows[("ar-twin", 1)]["tokens_per_forward"] <= 1.0
    assert rows[("reference", 1)]["nfe_per_call"] == 16  # one token per step, 16 steps (no early end)
    assert all(rows[(s, 1)]["nfe_per_call"] <= 16 for s in systems if s.startswith("dual"))
    assert rows[("dual-inc+fixed4", 1)]["nfe_per_call"] == 4  # 16 tokens, 4 per step
    # At temperature 0 a batch gives what each prompt gives alone; the exported twin under
    # transformers' generate() gives exactly our AR twin's output.
    for s in systems:
        assert rows[(s, 2)]["identical_share"] is not None
    assert rows[("reference", 2)]["identical_share"] == 1.0
    assert rows[("ar-twin", 2)]["identical_share"] == 1.0
    if HAS_HF:
        assert rows[("hf-llama", 1)]["identical_share"] == 1.0
    assert set(result["profile"]) >= {"reference", "ar-twin"}
    assert 0 < result["profile"]["reference"]["body_share"] <= 1
    assert result["checkpoints"][0]["tokens_per_forward"] > 0
    target = result["target"]
    assert target["met"] in (True, False) and target["best_any"] in systems
    assert set(target["tokens_per_forward_needed"]) == {s for s in systems if s not in bench.AR_SYSTEMS}
    paths = bench_report.write_outputs(result, tmp_path, log=logged.append)
    saved = json.loads(paths["json"].read_text())
    assert saved["results"] == result["results"] and saved["machine"]["cores"] >= 1
    table = paths["table"].read_text()
    assert table.count("\n|") == len(rows) + 1 and "dual+thr0.5" in table and "AR twin:" in table
    if HAS_MPL:
        assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_bench_command_writes_its_outputs(twins, tmp_path):
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps(PROMPTS[:2]))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "quicksilver.cli", "bench", "--model", str(twins["diffusion"]),
                           "--ar-model", str(twins["ar"]), "--prompt-file", str(prompt_file), "--max-new-tokens",
                           "8", "--block-length", "8", "-b", "1", "--repeats", "1", "--warmup", "0", "--dtype",
                           "auto", "-s", "dual+thr0.9", "-s", "ar-twin", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dual+thr0.9" in proc.stdout and (out / "bench.json").is_file()
    picked = json.loads((out / "bench.json").read_text())["dtype"]
    assert set(picked.values()) <= {"fp32", "bf16"} and picked  # auto timed both and kept one per model
    bad = subprocess.run([sys.executable, "-m", "quicksilver.cli", "bench", "-s", "warp-drive"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "warp-drive" in bad.stderr


@pytest.mark.skipif(not HAS_HF, reason="needs transformers (the bench extra)")
def test_exported_llama_computes_the_same_logits(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from quicksilver.loading.export_hf import export_hf_llama, to_hf_llama

    model = Transformer(tiny_config(tiny_tokenizer, causal=True, rope_theta=500.0))
    model.reset_parameters(seed=2)
    model.eval()
    x = torch.randint(10, model.config.vocab_size, (2, 11))
    with torch.no_grad():
        ours = model(x)
        torch.testing.assert_close(to_hf_llama(model)(input_ids=x).logits, ours, atol=1e-5, rtol=1e-5)
        folder = export_hf_llama(model, tmp_path / "llama", tiny_tokenizer)
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        torch.testing.assert_close(loaded(input_ids=x).logits, ours, atol=1e-5, rtol=1e-5)


def test_export_refuses_a_diffusion_model(tiny_tokenizer):
    from quicksilver.loading.export_hf import ExportError, llama_config_dict

    with pytest.raises(ExportError, match="causal"):
        llama_config_dict(Transformer(tiny_config(tiny_tokenizer)))


def test_default_settings_are_defined_and_valid():
    assert set(bench.DEFAULT_SETTINGS) <= set(bench.DIFFUSION_SETTINGS)
    assert bench.DEFAULT_SETTINGS[0] == "reference" and bench.DIFFUSION_SETTINGS["reference"][0] == {}
    for name, (fields, _) in bench.DIFFUSION_SETTINGS.items():
        bench.make_policy(fields, 256, 32).validate()
    assert bench.make_policy(bench.DIFFUSION_SETTINGS["dual-inc+fixed4"][0], 256, 32).steps == 64
