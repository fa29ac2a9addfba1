"""The random model builders that tests and bench/generation.py use."""

from __future__ import annotations

import pytest

from tiny_llm import build_random_llama

pytestmark = [pytest.mark.model]


def test_random_llama_of_a_published_shape_has_a_tokenizer_filling_its_vocabulary(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    words = "Write a short poem about the sea . Write".split()
    out = build_random_llama(tmp_path / "m", "llama-3.2-1b", words, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, vocab_size=300)
    config, tok = AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert config.vocab_size == len(tok) == 300
    assert config.num_key_value_heads == 1 and config.tie_word_embeddings  # overrides and the shape both apply
    ids = tok("Write a short poem about the sea .", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and tok.unk_token_id not in ids  # one id per known word
    assert tok.convert_ids_to_tokens(299) == "w299"  # filler words reach the end of the vocabulary
    text = tok.apply_chat_template([{"role": "user", "content": "Write a poem"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|assistant|>")
    assert tok.convert_tokens_to_ids("<|assistant|>") == tok(text, add_special_tokens=False)["input_ids"][-1]
