"""Issue kind 6: what the server says it honours reaches the model.

* A chat message that the chat template renders nothing of (a role it has no branch for, such as Qwen3 and
  "developer") was answered 200 with the message silently gone. Every message now reaches the prompt or is
  refused with a 400 naming its index and role; the check reads what the template produced.
* A body that does not fit the schema got 422, which the `openai` client raises as UnprocessableEntityError.
  OpenAI and vLLM answer 400 (BadRequestError), with `param` naming the field.
"""

from __future__ import annotations

import copy

import httpx
import openai
import pytest

from flexrealign.serving import Engine, create_app
from flexrealign.serving.audit import Refused, audit_rendering
from flexrealign.serving.server import BackgroundServer
from helpers import qwen3_inra, qwen3_tokenizer

# A template of our own that has no branch for "developer" and trims content, as many real templates do.
NO_DEVELOPER = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] in ('system', 'user', 'assistant') %}"
    "{{ m['role'] }}: {{ m['content'] | trim }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
USER = {"role": "user", "content": "Tell me a story."}
FRENCH = "Answer in French only."


@pytest.fixture(scope="module")
def qwen():
    return qwen3_tokenizer()


def _templated(tokenizer, template: str):
    tok = copy.copy(tokenizer)
    tok.chat_template = template
    return tok


def _refused(tok, messages, **kwargs) -> Refused:
    with pytest.raises(Refused) as err:
        audit_rendering(tok, messages, kwargs)
    return err.value


# ------------------------------------------------------------------------------------ the template check
@pytest.mark.parametrize("role", ["developer", "critic", "tool"])
def test_qwen3_drops_roles_it_has_no_branch_for(qwen, role) -> None:
    """Qwen3's template renders system, user, assistant and tool; "developer" and custom roles vanish. (The
    HTTP schema refuses tool and custom roles before this; the check itself sees that "tool" is rendered.)"""
    messages = [{"role": "system", "content": "Be brief."}, {"role": role, "content": FRENCH}, USER]
    if role == "tool":
        audit_rendering(qwen, messages, {})
        return
    e = _refused(qwen, messages)
    assert e.param == "messages[1].role" and e.code == "message_not_rendered"
    assert "messages[1]" in e.message and repr(role) in e.message
    assert "system, user" in e.message  # the roles this template did render


def test_qwen3_conversations_it_renders_in_full_pass(qwen) -> None:
    """A system prompt first or later, multi-turn history, thinking off: nothing is lost, nothing refused.
    An earlier assistant turn's thinking is dropped by Qwen3's template as documented; its answer stays."""
    history = [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "assistant", "content": "<think>\nA dog story.\n</think>\n\nA dog ran home."},
        {"role": "system", "content": FRENCH},
        {"role": "user", "content": "Another one."},
    ]
    for kwargs in ({}, {"enable_thinking": False}):
        audit_rendering(qwen, history, kwargs)
    prompt = qwen.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert "A dog story." not in prompt and "A dog ran home." in prompt  # why the answer alone is required


def test_a_template_that_ignores_a_role_is_refused_by_index(qwen) -> None:
    tok = _templated(qwen, NO_DEVELOPER)
    messages = [USER, {"role": "assistant", "content": "Once."}, {"role": "developer", "content": FRENCH}]
    e = _refused(tok, messages)
    assert e.param == "messages[2].role" and "messages[2] (role 'developer')" in e.message
    padded = [{"role": "system", "content": "  Be brief.\n"}, USER]  # trimmed by the template: still there
    audit_rendering(tok, padded, {})


def test_content_the_template_drops_is_refused_even_when_the_role_renders(qwen) -> None:
    """The role has a branch, but the template drops some contents: the real prompt is checked as well."""
    skips_hash = (
        "{% for m in messages %}{% if not m['content'].startswith('#') %}"
        "{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok = _templated(qwen, skips_hash)
    e = _refused(tok, [{"role": "system", "content": "# Rules: " + FRENCH}, USER])
    assert e.param == "messages[0].content" and "messages[0] (role 'system')" in e.message


def test_a_template_that_keeps_the_last_turns_only_is_refused(qwen) -> None:
    last_two = "{% for m in messages[-2:] %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok = _templated(qwen, last_two)
    e = _refused(tok, [{"role": "system", "content": FRENCH}, USER, {"role": "assistant", "content": "Hi"}])
    assert e.param == "messages[0].role"


def test_a_template_that_raises_names_the_message(qwen) -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'developer' %}{{ raise_exception('no developer role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tok = _templated(qwen, strict)
    e = _refused(tok, [USER, {"role": "developer", "content": FRENCH}])
    assert e.param == "messages[1].role" and e.code == "template_error" and "no developer role" in e.message


# ------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def stories_server(stories260k):
    """(client, tokenizer, url): the plain stories260K model behind a server, its template NO_DEVELOPER."""
    tok = _templated(stories260k[1], NO_DEVELOPER)
    with Engine(stories260k[0], tok) as engine, BackgroundServer(create_app(engine, "stories")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        yield client, tok, server.url


def _chat(client: openai.OpenAI, messages: list[dict], model: str = "stories", **kw):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=2, temperature=0, **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_http_refuses_a_message_the_template_drops(stories_server, stream) -> None:
    client, tok, _ = stories_server
    messages = [{"role": "developer", "content": FRENCH}, USER]
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, messages, stream=stream)
    assert err.value.status_code == 400 and err.value.body["param"] == "messages[0].role"
    assert "messages[0] (role 'developer')" in err.value.body["message"]
    served = [{"role": "system", "content": FRENCH}, USER]  # the role it renders: served, all of it counted
    out = _chat(client, served)
    want = tok.apply_chat_template(served, tokenize=True, add_generation_prompt=True, return_dict=True)
    alone = tok.apply_chat_template([USER], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert out.usage.prompt_tokens == len(want["input_ids"]) > len(alone["input_ids"])


def test_http_qwen3_refuses_developer_and_serves_the_rest(qwen) -> None:
    model = qwen3_inra(qwen)
    with Engine(model, qwen) as engine, BackgroundServer(create_app(engine, "qwen")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError, match=r"messages\[1\] \(role 'developer'\)") as err:
            _chat(client, [USER, {"role": "developer", "content": FRENCH}], model="qwen")
        assert err.value.body["param"] == "messages[1].role"
        served = [USER, {"role": "system", "content": FRENCH}]  # a later system message: Qwen3 renders it
        out = _chat(client, served, model="qwen")
        want = qwen.apply_chat_template(served, tokenize=True, add_generation_prompt=True, return_dict=True)
        assert out.usage.prompt_tokens == len(want["input_ids"])


def test_chat_template_arguments_the_renderer_refuses_are_a_400(stories_server) -> None:
    """tokenize / add_generation_prompt in chat_template_kwargs crashed the renderer (500)."""
    client, _, _ = stories_server
    for kwargs in ({"tokenize": True}, {"add_generation_prompt": False}):
        with pytest.raises(openai.BadRequestError, match="chat template arguments") as err:
            _chat(client, [USER], extra_body={"chat_template_kwargs": kwargs})
        assert err.value.body["param"] == "chat_template_kwargs"


# ---------------------------------------------------------------------------------- 400, never 422
BAD_FIELDS = [  # (request keywords, extra_body, param)
    ({"max_tokens": -1}, {}, "max_tokens"),
    ({"temperature": "hot"}, {}, "temperature"),
    ({"top_p": 2}, {}, "top_p"),
    ({"seed": "abc"}, {}, "seed"),
    ({"stop": 5}, {}, "stop"),
    ({"n": 0}, {}, "n"),
    ({}, {"thinking_token_budget": -3}, "thinking_token_budget"),
    ({}, {"lam": "high"}, "lam"),
    ({}, {"ignore_eos": "maybe"}, "ignore_eos"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_openai_client_gets_bad_request_for_every_field_error(stories_server, endpoint, stream) -> None:
    client, _, _ = stories_server
    for fields, extra, param in BAD_FIELDS:
        kw = {"max_tokens": 2, **fields, "stream": stream, "extra_body": extra}
        with pytest.raises(openai.BadRequestError) as err:
            if endpoint == "chat":
                client.chat.completions.create(model="stories", messages=[USER], **kw)
            else:
                client.completions.create(model="stories", prompt="Once", **kw)
        body = err.value.body
        assert err.value.status_code == 400 and body["param"] == param, (fields, extra, body)
        assert body["type"] == "invalid_request_error" and body["message"].startswith(param)


RAW = [  # (path, content, content type, param)
    ("/v1/chat/completions", '{"model": "stories", "messages": [', "application/json", None),
    ("/v1/completions", '{"model": "stories", "prompt": "Hi"}', "text/plain", None),
    ("/v1/chat/completions", "", "application/json", None),
    ("/v1/completions", '["stories", "Hi"]', "application/json", None),
    ("/v1/completions", "model=stories&prompt=Hi", "application/x-www-form-urlencoded", None),
    ("/v1/completions", '{"model": "stories"}', "application/json", "prompt"),
    ("/v1/completions", '{"model": "stories", "prompt": 5}', "application/json", "prompt"),
    ("/v1/chat/completions", '{"model": "stories", "messages": [{"role": "user", "content": 5}]}',
     "application/json", "messages[0].content"),
    ("/v1/chat/completions", '{"model": "stories", "messages": [{"role": "user", "content": "a"}, {"content": '
     '"b"}]}', "application/json", "messages[1].role"),
    ("/v1/chat/completions", '{"model": "stories", "messages": [{"role": "user", "content": [{"text": "a"}]}]}',
     "application/json", "messages[0].content[0].type"),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(RAW)))
def test_every_unparsable_or_invalid_body_is_a_400_with_an_openai_body(stories_server, case) -> None:
    _, _, url = stories_server
    path, content, content_type, param = RAW[case]
    resp = httpx.post(url + path, content=content, headers={"Content-Type": content_type}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"], error
    if content_type == "text/plain":
        assert "Content-Type: application/json" in error["message"] and "text/plain" in error["message"]
