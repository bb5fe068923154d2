"""Controllable generation in the library: schema compilation, structured output on both model kinds,
edits of any span, placeholders, spans that end early, and the CLI's refusals."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import jsonschema
import pytest
import torch

import quicksilver
from quicksilver.control import SchemaError
from quicksilver.control.edit import SpanError, check_spans, line_spans, parse_placeholders
from quicksilver.control.schema import Budgets, compile_schema
from quicksilver.control.template import Fixed, Slot, Template, layout
from quicksilver.control.vocab import token_classes
from quicksilver.control.fill import fill_diffusion
from quicksilver.control.samples import sample_schemas
from quicksilver.sampling import DecodePolicy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return quicksilver.load("coder-tiny", device="cpu")


@pytest.fixture(scope="module")
def twin():
    return quicksilver.load("coder-tiny-ar", device="cpu")


SCHEMAS = sample_schemas(50)
SMALL = dict(string_tokens=2, integer_tokens=2)


def test_the_schema_set_covers_every_kind():
    text = json.dumps(SCHEMAS)
    for word in ('"array"', '"enum"', '"number"', '"boolean"', '"integer"', '"string"', '"null"', '"anyOf"',
                 '"required"', '"object"'):
        assert word in text
    assert len(SCHEMAS) >= 50


@pytest.mark.parametrize("which", ["tiny", "twin"])
def test_every_structured_output_validates(which, request):
    lm = request.getfixturevalue(which)
    valid = 0
    for i, schema in enumerate(SCHEMAS):
        result = lm.generate_json(f"# record {i}\nvalue = ", schema, **SMALL)
        jsonschema.validate(json.loads(result.text), schema)  # generate_json validated it too
        assert result.value == json.loads(result.text)
        valid += 1
    assert valid == len(SCHEMAS)


def test_sampled_structured_output_validates(tiny, twin):
    for lm in (tiny, twin):
        for seed in range(5):
            schema = SCHEMAS[seed]
            result = lm.generate_json("x = ", schema, temperature=1.0, seed=seed, **SMALL)
            jsonschema.validate(json.loads(result.text), schema)


def test_template_tokens_cost_no_forward_pass(tiny, twin):
    schema = {"type": "object", "properties": {"first_name": {"type": "string"}, "last_name": {"type": "string"},
                                               "age": {"type": "integer"}}}
    for lm in (tiny, twin):
        result = lm.generate_json("person = ", schema, string_tokens=3, integer_tokens=2)
        assert result.fixed_tokens > 0
        # diffusion: one pass per committed slot position at most; AR: the prefill plus one per sampled token
        assert result.nfe <= 3 + 3 + 2 + 1 < result.tokens


@pytest.mark.parametrize("schema, word", [
    ({"type": "string", "pattern": "a+"}, "pattern"),
    ({"type": "integer", "minimum": 3}, "minimum"),
    ({"allOf": [{"type": "string"}]}, "no type"),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "anyOf"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/x"}}}, "$ref"),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, "prefixItems"),
    ({"type": "strin"}, "not valid JSON Schema"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
])
def test_unsupported_schemas_name_the_keyword(tiny, schema, word):
    with pytest.raises(SchemaError, match=word.replace("$", r"\$")):
        tiny.generate_json("x = ", schema)


def test_local_refs_are_followed(tiny):
    schema = {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
              "type": "object", "properties": {"a": {"$ref": "#/$defs/P"}, "b": {"$ref": "#/$defs/P"}}}
    jsonschema.validate(tiny.generate_json("p = ", schema, **SMALL).value, schema)


def test_compiled_template_fixes_keys_and_punctuation(tiny):
    classes = token_classes(tiny.tokenizer, [0, 1, 2, 3, 4, 5])
    t = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}},
                       classes, tiny.encode, Budgets(integer_tokens=2))
    assert [type(p).__name__ for p in t.parts] == ["Fixed", "Slot", "Fixed", "Slot", "Fixed"]
    assert t.parts[0].text == '{"a": ' and t.parts[2].text == ', "b": ' and t.parts[4].text == "}"
    assert t.parts[3].choices == [tiny.encode('"x"'), tiny.encode('"y"')]


# -- edits -----------------------------------------------------------------------------------------
SOURCE = "import os\n\n\ndef size(path):\n    total = 0\n    return os.path.getsize(path)\n\n\nprint(size('.'))\n"


@pytest.mark.parametrize("which", ["tiny", "twin"])
def test_edits_leave_every_unselected_byte_identical(which, request):
    lm = request.getfixturevalue(which)
    rng = random.Random(3)
    for trial in range(6):
        cuts = sorted(rng.sample(range(len(SOURCE) + 1), 4))
        spans = [(cuts[0], cuts[1], rng.randint(1, 6)), (cuts[2], cuts[3], rng.randint(1, 6))]
        result = lm.edit(SOURCE, spans=spans, temperature=0.8 * (trial % 2), seed=trial)
        out, pos = result.text, 0
        for (start, end, _), fill in zip(spans, result.fills):
            keep = SOURCE[pos:start]
            assert out.startswith(keep)
            out = out[len(keep):]
            assert out.startswith(fill)
            out = out[len(fill):]
            pos = end
        assert out == SOURCE[pos:]


def test_spans_end_early_and_trailing_positions_are_dropped(tiny):
    # A template whose slot may end: the model commits end of text after the first token, so the fill is
    # shorter than its budget and nothing of the dropped positions reaches the text.
    end = tiny.model.config.eos_token_id
    only_end_after_one = torch.zeros(tiny.model.config.vocab_size, dtype=torch.bool)
    x = tiny.encode("x")[0]
    first = torch.zeros_like(only_end_after_one)
    first[x] = True
    lay = layout(Template([Fixed("a = '"), Slot(5, first=first, rest=only_end_after_one, min_len=1), Fixed("'\n")]),
                 tiny.encode, tiny.model.config.mask_token_id)
    result = fill_diffusion(tiny.model, [], lay, DecodePolicy(block_length=8))
    assert result.values == [[x]]
    assert result.canvas[lay.places[0].start + 1:lay.places[0].start + 5] == [end] * 4
    assert lay.render(result.values, tiny.decode) == "a = 'x'\n"
    # A free edit span: the bundled tiny model never predicts end of text mid-file, so its head gets a
    # bias towards it for this call (the real model otherwise); the span then ends at once, every one
    # of its positions is dropped, and the text around it is untouched.
    head = tiny.model.head
    bias = torch.zeros(tiny.model.config.vocab_size)
    bias[end] = 50.0
    tiny.model.head = lambda h: head(h) + bias
    try:
        result = tiny.edit("x = 1\n<|mask:24|>\nprint(x)\n")
    finally:
        tiny.model.head = head
    assert result.fill_tokens == [0] and result.text == "x = 1\n\nprint(x)\n"


def test_placeholders_and_line_spans():
    text, spans = parse_placeholders("a<|mask|>b<|mask:3|>c")
    assert text == "abc" and spans == [(1, 1, 16), (2, 2, 3)]
    assert line_spans("one\ntwo\nthree\n", [(2, 3)], 5) == [(4, 13, 5)]
    with pytest.raises(SpanError, match="overlap"):
        check_spans("hello", [(0, 3, 1), (2, 4, 1)])
    with pytest.raises(SpanError, match="no spans"):
        check_spans("hello", [])
    with pytest.raises(SpanError, match="outside"):
        line_spans("one\n", [(1, 2)])


def test_cli_edit_writes_a_diff_and_refuses_bad_spans(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def add(a, b):\n    return a + b\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "quicksilver.cli", *a], capture_output=True, text=True,
                                    timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    ok = run("edit", str(f), "--span", "2:2", "--max-tokens", "4")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("--- a/m.py\n+++ b/m.py\n") and "-    return a + b" in ok.stdout
    bad = run("edit", str(f), "--span", "3:5")
    assert bad.returncode == 2 and "outside the file's lines" in bad.stderr and "Traceback" not in bad.stderr
    written = run("edit", str(f), "--span", "2:2", "--max-tokens", "4", "--write")
    assert written.returncode == 0 and f.read_text().startswith("def add(a, b):\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    ok = run("json", "x = ", "--schema", str(schema))
    assert ok.returncode == 0, ok.stderr
    assert isinstance(json.loads(ok.stdout.splitlines()[0])["n"], int)
    schema.write_text(json.dumps({"type": "integer", "maximum": 3}))
    bad = run("json", "x = ", "--schema", str(schema))
    assert bad.returncode == 2 and "unsupported keyword 'maximum'" in bad.stderr
