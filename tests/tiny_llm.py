"""A tiny random-initialised Llama and a tokenizer trained on a few lines, saved to a folder:
enough for vLLM to load and generate (garbage text; the tests check mechanics)."""

from __future__ import annotations

from pathlib import Path

LINES = [
    "Write a short poem about the sea.", "The answer is 42.", "def add(a, b): return a + b",
    "Explain why the sky is blue in one sentence.", "List three fruits: apple, pear, plum.",
]


def build_tiny_llama(out: Path, vocab_size: int = 512, seed: int = 0, max_positions: int = 512) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"])
    tok.train_from_iterator(LINES * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    # head_dim 64: vLLM's CPU attention rejects smaller heads.
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=max_positions,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    return out


# Published architectures, random weights: throughput figures at a real model's size without
# downloading one (the lent GPU machines reach no hub).
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
                         tie_word_embeddings=True),
}


def build_random_llama(out: Path, shape: str, words: list[str], seed: int = 0, max_positions: int = 4096,
                       **overrides) -> Path:
    """A random-initialised Llama of a published shape (`SHAPES`) with a word-level tokenizer
    whose vocabulary fills the shape's: the given words (so prompts tokenize to real ids, about
    one per word), then filler words. Generation samples the whole vocabulary, so every id must
    decode; a BPE trained on a few lines cannot reach 128k entries."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config_args = {**SHAPES[shape], **overrides}
    special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {t: i for i, t in enumerate(special)}
    for w in words:
        if len(vocab) >= config_args["vocab_size"]:
            break
        vocab.setdefault(w, len(vocab))
    while len(vocab) < config_args["vocab_size"]:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": special[3:]})
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(max_position_embeddings=max_positions, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **config_args)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of ~1B weights: seconds on a GPU
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caller's engine wants the GPU's memory next
    return out
