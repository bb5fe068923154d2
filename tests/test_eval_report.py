"""Results, tables, the curve PNG, and the generated section of docs/models.md."""
from __future__ import annotations

from pathlib import Path

from quicksilver.eval.report import (BEGIN, END, curve_table, load_results, markdown_table, models_section,
                                     plot_curve, result_name, update_doc, write_result)


def _results() -> list[dict]:
    common = {"command": "quicksilver eval ...", "created": "2026-11-26 07:30 UTC"}
    return [
        {"eval": "humaneval", "system": {"name": "coder-tiny"}, "setting": "fixed 1 token(s)/step, block 32",
         "usage": {"tokens_per_forward": 1.0}, "problems": 164, "n": 1, "temperature": 0.0, "max_new_tokens": 128,
         "pass@1": 0.0122, "solved": 2, **common},
        {"eval": "humaneval", "system": {"name": "coder-tiny"}, "setting": "subset", "usage": {}, "problems": 3,
         "n": 1, "temperature": 0.0, "max_new_tokens": 16, "pass@1": 1.0, "solved": 3, **common},
        {"eval": "infill", "mode": "single-line", "system": {"name": "coder-tiny-ar"}, "setting": "autoregressive",
         "usage": {"tokens_per_forward": 1.0}, "tasks": 1033, "passed": 31, "pass_rate": 0.03, "exact_match": 0.02,
         "budget": 24, **common},
        {"eval": "ppl", "system": {"name": "coder-tiny"}, "setting": "teacher-forced", "bits_per_byte": 1.2345,
         "se_monte_carlo_bits_per_byte": 0.004, "nats_per_token": 3.1, "windows": 128, "seq_len": 256,
         "estimator": "NELBO upper bound", **common},
    ]


def test_section_picks_full_runs_and_says_what_is_missing():
    section = models_section(_results())
    assert "1.2% (164 problems, n=1, T=0)" in section  # the full run, not the 3-problem subset
    assert "3.0% (31 / 1033 lines" in section
    assert "1.234 ± 0.004 (upper bound)" in section
    assert "not measured" in section  # e.g. the twin's HumanEval
    assert "fixed 1 token(s)/step, block 32, 128 new tokens (1.00)" in section


def test_update_doc_only_touches_the_marked_section(tmp_path):
    doc = tmp_path / "models.md"
    doc.write_text("# Models\n\nhand-written text\n")
    update_doc(doc, "first version")
    text = doc.read_text()
    assert text.startswith("# Models\n\nhand-written text\n") and f"{BEGIN}\nfirst version\n{END}" in text
    doc.write_text(text + "\nmore text by someone else\n")
    update_doc(doc, "second version")
    text = doc.read_text()
    assert "first version" not in text and "second version" in text
    assert text.count(BEGIN) == 1 and text.endswith("more text by someone else\n")
    assert text.startswith("# Models\n\nhand-written text\n")


def test_write_load_and_table(tmp_path):
    for r in _results():
        write_result(r, tmp_path)
    assert result_name(_results()[1]) == "humaneval-subset-coder-tiny.json"
    loaded = load_results(tmp_path)
    assert len(loaded) == 4
    table = markdown_table(loaded)
    assert table.count("\n") == 5 and "pass@1 1.2%" in table


def test_curve_plot(tmp_path):
    point = lambda s, tpf, p, kind="diffusion": {  # noqa: E731
        "setting": s, "setting_short": s, "kind": kind,
        "humaneval": {"pass@1": p, "tokens_per_forward": tpf}, "infill": {"pass_rate": p / 2, "tokens_per_forward": tpf}}
    curve = {"points": {"coder-tiny": [point("fixed:1", 1.0, 0.1), point("fixed:4", 4.0, 0.05)],
                        "coder-tiny-ar": [point("AR", 1.0, 0.12, "autoregressive")]},
             "scope": {"humaneval": "20 problems", "infill": "100 tasks"}, "command": "quicksilver eval curve"}
    png = plot_curve(curve, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert curve_table(curve).count("\n") == 4
    section = models_section([], curve=curve, curve_png="eval/curve.png")
    assert "![speed-quality curve](eval/curve.png)" in section and "quicksilver eval curve" in section
