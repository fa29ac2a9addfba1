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
