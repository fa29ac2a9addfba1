"""Chat templates without a system role (Gemma's raises, Mistral-style ones raise when roles do
not alternate, some drop the system text): found by a probe at engine start and handled by
folding the system text into the first user turn; a template that cannot render at all, or a
model folder with none, fails in one line that names the template and the fix. Tiny word-level
tokenizers built here; the last test runs the real vLLM engine on a tiny Llama."""

import json

import pytest

from curate.errors import CurateError
from curate.generators.backends.chat_template import FOLD, NATIVE, fold_system, preflight, probe, render


NATIVE_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# Gemma's: a leading system turn raises.
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# Mistral's older template: roles must alternate user/assistant, so a system turn raises.
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
# Drops anything that is not user or assistant, without a word.
SILENT = "{% for m in messages %}{% if m['role'] in ['user', 'assistant'] %}<{{ m['role'] }}>{{ m['content'] }}{% endif %}{% endfor %}"
BROKEN = "{{ raise_exception('this template renders nothing') }}"


def tokenizer(template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = template
    return fast


@pytest.mark.parametrize("template, expected", [(NATIVE_TEMPLATE, NATIVE), (GEMMA, FOLD), (MISTRAL, FOLD), (SILENT, FOLD)])
def test_probe_finds_templates_without_a_system_role(template, expected):
    assert probe(tokenizer(template), "tiny") == expected


def test_folded_conversations_render_under_each_template():
    chat = [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "Where is the treasure?"},
            {"role": "assistant", "content": "Arr, buried."}, {"role": "user", "content": "Where exactly?"}]
    for template in (GEMMA, MISTRAL, SILENT):
        text = render(tokenizer(template), fold_system(chat))
        assert "Answer like a pirate.\n\nWhere is the treasure?" in text and "Where exactly?" in text
        assert text.index("pirate") < text.index("treasure") < text.index("buried")


def test_fold_system():
    assert fold_system([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]
    assert fold_system([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]) == [{"role": "user", "content": "S\n\nU"}]
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    two = fold_system([{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "U"},
                       {"role": "assistant", "content": "X"}, {"role": "system", "content": "C"}, {"role": "user", "content": "V"}])
    assert [m["role"] for m in two] == ["user", "assistant", "user"] and two[0]["content"] == "A\n\nB\n\nU" and two[2]["content"] == "C\n\nV"


@pytest.mark.parametrize("template, said", [(BROKEN, "TemplateError: this template renders nothing"),
                                            (None, "ValueError: Cannot use chat template functions")])
def test_a_template_that_cannot_render_a_user_turn_fails_in_one_line(template, said):
    with pytest.raises(CurateError) as e:
        probe(tokenizer(template), "org/tiny-base")
    message = str(e.value)
    assert "\n" not in message and said in message and "chat_template" in message


def test_the_backend_spec_can_give_the_template(tmp_path):
    path = tmp_path / "gemma.jinja"
    path.write_text(GEMMA)
    assert probe(tokenizer(None), "tiny", str(path)) == FOLD
    assert probe(tokenizer(None), "tiny", NATIVE_TEMPLATE) == NATIVE


def test_preflight_stops_a_model_folder_without_a_chat_template(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # org/on-the-hub may download
    from curate.generators.evol import EvolInstruct
    from curate.generators.respond import Respond
    from curate.generators.self_instruct import SelfInstruct
    from curate.generators.skillmix import SkillMix

    base, chat = tmp_path / "base", tmp_path / "chat"
    tokenizer(None).save_pretrained(base)
    tokenizer(GEMMA).save_pretrained(chat)
    for folder in (base, chat):  # model folders as the backend preflight wants them (pipeline/preflight.py)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 512}))
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    config = json.loads((base / "tokenizer_config.json").read_text())
    assert not config.get("chat_template") and not (base / "chat_template.jinja").exists()
    for stage in (Respond, SelfInstruct, EvolInstruct, SkillMix):
        with pytest.raises(CurateError, match="has no chat template.*chat_template"):
            stage.preflight({"backend": {"kind": "vllm", "model": str(base)}})
        stage.preflight({"backend": {"kind": "vllm", "model": str(chat)}})  # Gemma's is folded at engine start
        stage.preflight({"backend": {"kind": "vllm", "model": str(base), "chat_template": NATIVE_TEMPLATE}})
        stage.preflight({"backend": {"kind": "vllm", "model": "org/on-the-hub"}})  # not here to read
        preflight({"kind": "openai", "model": str(base)})  # the server renders (the stage's own preflight probes it)
    preflight(None)


@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.slow
def test_vllm_engine_folds_the_system_turn_under_a_gemma_style_template(tmp_path):
    """The real engine on a tiny Llama whose template raises on the system role: a request
    with a system turn generates, its prompt is the folded conversation, and the engine's stats
    say so."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from tiny_llm import build_tiny_llama

    from curate.generators.backends import make_backend
    from curate.generators.backends.base import ChatRequest, Sampling

    model = build_tiny_llama(tmp_path / "gemma-like")
    (model / "chat_template.jinja").write_text(GEMMA)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    backend = make_backend({"kind": "vllm", "model": str(model), "dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    assert backend.system_role == FOLD and backend.stats()["system_role"] == FOLD
    chat = [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Write a short poem about the sea."}]
    (out,) = backend.generate([ChatRequest(chat, Sampling(max_tokens=8, temperature=0.0))])
    assert out[0].finish_reason in ("length", "stop") and out[0].completion_tokens > 0
    folded = backend.tokenizer(render(backend.tokenizer, fold_system(chat)), add_special_tokens=False)["input_ids"]
    assert backend.prompt_token_ids([chat]) == [folded] and out[0].prompt_tokens == len(folded)


def test_openai_backend_folds_when_the_server_refuses_a_system_turn():
    """An OpenAI-compatible server (vLLM serve of a Gemma) answers 400 to a system turn: the
    request is sent again folded, and later requests are folded at once; other 400s stay errors."""
    import http.server
    import threading

    from curate.generators.backends.base import ChatRequest, Sampling
    from curate.generators.backends.openai_http import OpenAIBackend

    seen = []

    class Gemma(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["messages"])
            if any(m["role"] == "system" for m in body["messages"]) or body["messages"][-1]["content"] == "bad":
                said = "System role not supported" if body["messages"][-1]["content"] != "bad" else "max_tokens is too large"
                data, status = json.dumps({"error": {"message": said}}).encode(), 400
            else:
                data, status = json.dumps({"choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
                                           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode(), 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gemma)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        b = OpenAIBackend("gemma", base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", max_retries=0, concurrency=1)
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert b.generate([ChatRequest(chat, Sampling())])[0][0].text == "ok"
        assert seen == [chat, [{"role": "user", "content": "Be brief.\n\nHi"}]] and b.fold_system
        assert b.generate([ChatRequest(chat, Sampling())])[0][0].text == "ok" and len(seen) == 3  # folded at once
        with pytest.raises(CurateError, match="max_tokens is too large"):
            b.generate([ChatRequest([{"role": "user", "content": "bad"}], Sampling())])
    finally:
        httpd.shutdown()
        httpd.server_close()
