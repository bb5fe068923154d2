"""Chat templates: the default template's text, message checks, and the Jinja sandbox."""
import pytest

from quicksilver.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, render_chat


def test_default_template_marks_turns_and_opens_the_assistant_turn():
    text = render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert text == "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\n"
    assert not render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=False).endswith("<|assistant|>\n")


def test_openai_content_parts_keep_their_text():
    text = render_chat([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                                                      {"type": "text", "text": "b"}]}], DEFAULT_CHAT_TEMPLATE)
    assert "<|user|>\nab\n" in text


@pytest.mark.parametrize("messages, fragment", [
    ([], "at least one message"),
    (["hi"], "message 0 is not an object"),
    ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
    ([{"role": "user", "content": 3}], "no text content"),
])
def test_bad_messages_get_one_sentence(messages, fragment):
    with pytest.raises(ChatTemplateError, match=fragment):
        render_chat(messages)


def test_a_template_cannot_reach_python_internals():
    hostile = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_chat([{"role": "user", "content": "x"}], hostile)


def test_template_errors_and_raise_exception_are_chat_errors():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat([{"role": "user", "content": "x"}], "{% for %}")
    refusing = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="system first"):
        render_chat([{"role": "user", "content": "x"}], refusing)
    # Special tokens are template variables, as Hugging Face passes them.
    assert render_chat([{"role": "user", "content": "x"}], "{{ bos_token }}{{ messages[0]['content'] }}",
                       bos_token="<s>") == "<s>x"
