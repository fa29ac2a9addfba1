"""What every model-based scorer shares: load a Hugging Face causal LM and its tokenizer, turn a
conversation into prompt and answer token ids, and batch sequences by length.

Sequences are right-padded and run without an attention mask: in a causal LM a real token only
attends to the tokens before it, so padding after the last real token cannot change any real
token's logits or hidden states. That keeps the batched results equal to one-at-a-time ones,
and lets SDPA take its causal fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# Used when a tokenizer has no chat template: the Tulu format RDS+ and LESS train on.
TULU_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: str | None = None):
    """bf16 on a GPU, fp32 on a CPU (CPU bf16 matmuls are slow and lose the 1e-4 agreement).
    The model scorers (IFD, LESS) use `scoring_dtype` instead, which also picks bf16 on CPUs
    with bf16 instructions."""
    import torch

    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX-512 BF16, or AMX tiles) that
    oneDNN uses for bf16 matmuls; without them torch emulates bf16 and it is slower than fp32."""
    import torch

    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def scoring_dtype(device: str, dtype: str | None = None):
    """The dtype the model scorers (IFD, LESS) run in: `dtype` when given (a torch dtype name);
    `None`/`auto`: bf16 on a GPU and on a CPU with bf16 instructions (`cpu_has_bf16`: there the
    bf16 matmuls run about 4x the fp32 rate: 130-160 against 30-40 GFLOPS on 2 Zen 4 cores), fp32
    on other CPUs (where torch emulates bf16: 10-12 against 60-64 GFLOPS for fp32 on 2 cores of an
    AVX2-only EPYC). bf16 moves losses by about 1% (bench/scoring.py reports the difference)."""
    import torch

    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if str(device).startswith("cuda") or (str(device) == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


def resolve_model(model: str) -> str:
    """The folder (or hub id) to load: `default` is curate's built-in model (curate/models.py,
    built on first use; CurateError when it cannot be); any other name is returned as it is."""
    from curate.models import resolve_model as resolve

    return resolve(model)


def load_tokenizer(model: str):
    """The model's tokenizer; one without a chat template gets TULU_TEMPLATE. `model`: a
    folder, a hub id, or `default`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    if tok.chat_template is None:
        tok.chat_template = TULU_TEMPLATE
    return tok


def load_causal_lm(model: str, device: str | None = None, dtype: str | None = None, attn: str | None = None,
                   scoring: bool = False):
    """(model in eval mode on its device, tokenizer, device). `model`: a folder, a hub id, or
    `default` (curate's built-in Gemma 3 270M, built once on first use: curate/models.py).
    `dtype` None picks by `scoring_dtype` when `scoring` (IFD, LESS), else by `pick_dtype`."""
    from transformers import AutoModelForCausalLM

    model = resolve_model(model)
    device = pick_device(device)
    kwargs = {"dtype": (scoring_dtype if scoring else pick_dtype)(device, dtype)}
    if attn:
        kwargs["attn_implementation"] = attn
    lm = AutoModelForCausalLM.from_pretrained(model, **kwargs).to(device).eval()
    return lm, load_tokenizer(model), device


def context_ids(tok) -> list[int]:
    """What a sequence starts with when nothing else precedes it: BOS, or EOS for tokenizers
    without one (Qwen), so that the first real token is predicted and scored too."""
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return [] if start is None else [start]


@dataclass
class Encoded:
    """A conversation as token ids: `prompt` (context + turns up to the answer, with the
    generation prompt) and `answer` (the last assistant turn as the template renders it)."""

    prompt: list[int]
    answer: list[int]


def split_conversation(messages: list[dict]) -> tuple[list[dict], dict | None]:
    """(turns before the last assistant turn, that turn), or (all turns, None) without one."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return messages, None
    return messages[:last], messages[last]


def encode(tok, messages: list[dict]) -> Encoded:
    """Prompt and answer ids, tokenised apart (the answer starts a fresh token, as it does when a
    model generates it). The answer text is what the chat template renders after the prompt, end
    of turn included; a template that does not extend the prompt falls back to the raw content."""
    turns, answer = split_conversation(messages)
    prompt_text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) if turns else ""
    if answer is None:
        answer_text = ""
    else:
        full = tok.apply_chat_template([*turns, answer], tokenize=False)
        answer_text = full[len(prompt_text):] if full.startswith(prompt_text) else answer["content"]
    prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
    start = context_ids(tok)
    if start and prompt[:1] != start:
        prompt = start + prompt
    return Encoded(prompt, tok(answer_text, add_special_tokens=False)["input_ids"] if answer_text else [])


def conversations(batch: pa.Table) -> list[list[dict]]:
    return batch["messages"].to_pylist()


def length_batches(lengths, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, longest first (so an out-of-memory error
    shows up at once): each batch pads to at most `max_tokens` tokens and holds `max_rows` rows."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, int(lengths[i]))
        if current and (longest_if_added * (len(current) + 1) > max_tokens or len(current) >= max_rows):
            batches.append(np.array(current))
            current, longest_if_added = [], int(lengths[i])
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(np.array(current))
    return batches


def default_batch_tokens(device: str, dtype=None) -> int:
    """Tokens per forward pass: a GPU needs wide batches to fill it. On a CPU in fp32, batches
    compute no faster and lose cache locality (measured: 16 rows of 250 tokens took 20% longer in
    one batch than one by one), so fp32 gets about one row per pass; bf16 matmuls (oneDNN's
    AVX-512 BF16 kernels) run faster the more rows they get, so CPU bf16 gets several rows."""
    import torch

    if str(device).startswith("cuda"):
        return 16384
    return 4096 if dtype == torch.bfloat16 else 1024


def pad_right(seqs: list[list[int]], pad_id: int, device: str):
    """(B, T) id tensor, right-padded with `pad_id`."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device)


def token_nll(model, ids, needed, chunk_elements: int | None = None):
    """(B, T-1) NLL of tokens 1..T-1 given their prefixes, computed only where `needed` (a
    (B, T-1) bool mask; zero elsewhere). The vocabulary projection runs on the needed
    positions only, a chunk of positions at a time: a (B, T, V) logits tensor never exists, which
    skips padding. Chunks: `chunk_elements` logits (default 2^27 on a GPU); on a CPU, 2^23
    (~32 MB of fp32 logits, whose log-softmax runs several times faster per element than
    whole-batch logits) but at least 128 positions, since each chunk streams the whole (V, H)
    head through memory: with Gemma 3's 262,144-token vocabulary, 32-position chunks made the
    bf16 head memory-bound (5.2 ms/token on one core, 3.6 at 128). Models whose logits are
    more than lm_head(last hidden) (Gemma-2's soft-capping) take the plain path."""
    import torch

    head = model.get_output_embeddings()
    if getattr(model.config, "final_logit_softcapping", None) or head is None:
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return nll * needed
    hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1]
    states, targets = hidden[needed], ids[:, 1:][needed]
    if chunk_elements or ids.is_cuda:
        chunk_tokens = max(1, (chunk_elements or 1 << 27) // head.out_features)
    else:
        chunk_tokens = max(128, (1 << 23) // head.out_features)
    flat = torch.cat([
        torch.nn.functional.cross_entropy(head(states[i : i + chunk_tokens]).float(), targets[i : i + chunk_tokens], reduction="none")
        for i in range(0, len(states), chunk_tokens)
    ]) if len(states) else states.new_zeros(0, dtype=torch.float32)
    nll = torch.zeros(needed.shape, dtype=torch.float32, device=ids.device)
    nll[needed] = flat
    return nll


def pad_id(tok) -> int:
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0  # pragma: no cover
