"""IFD scores and LESS gradient features: curate's batched implementations against the reference
compute pattern (batch size 1, fp32, per-token loops, one backward() per example) on the same
model and rows, in one run, alternating over slices of the rows (a shared machine's load
changes within a run; alternating keeps the ratio fair).

    python bench/scoring.py --quick                      # a small random Llama built here (CPU)
    python bench/scoring.py --model PATH --rows 2000     # a real model (GPU: ours in bf16, reference fp32)

Rows are Alpaca examples whose prompt and answer fit `--max-length` tokens (so no row is skipped
on either side). LESS features are Adam-aware, from a one-epoch warmup checkpoint; both sides
share the projector, whose matrix blocks are built before timing. Model loading is not timed.
Prints figures, the last line one JSON object (keys per ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_bench_llama(out: Path, hidden: int = 256, layers: int = 4, vocab: int = 32000) -> Path:
    """The tests' tiny tokenizer with a larger random Llama: a Llama-2-sized vocabulary, since
    the reference's per-token log-softmax over the vocabulary is part of what it costs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_llm import build_tiny_llama

    path = build_tiny_llama(out)
    tiny = LlamaConfig.from_pretrained(path)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
                         max_position_embeddings=1024, bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id,
                         pad_token_id=tiny.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def alpaca_convs(tok, n: int, max_length: int, max_answer_words: int | None) -> list[list[dict]]:
    from bench._common import shared_data
    from curate.stages.ingest import Ingest
    from curate.lib.lm import encode

    ingest = Ingest()
    out = []
    for row in json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text()):
        conv = ingest.parse(json.dumps(row), "alpaca")["messages"]
        if max_answer_words:
            conv[-1]["content"] = " ".join(conv[-1]["content"].split()[:max_answer_words])
        enc = encode(tok, conv)
        if len(enc.prompt) + len(enc.answer) <= max_length and len(enc.prompt) > 1 and enc.answer:
            out.append(conv)
        if len(out) == n:
            break
    return out


def interleaved(ours, ref, n: int, rounds: int) -> tuple[float, float, list, list]:
    """Time ours and the reference on the same slices, alternately, so that a change in the
    machine's load during the run hits both alike. Returns (ours s, ref s, ours outs, ref outs)."""
    bounds = [round(i * n / rounds) for i in range(rounds + 1)]
    ours_s = ref_s = 0.0
    ours_out, ref_out = [], []
    for a, b in zip(bounds, bounds[1:]):
        start = time.perf_counter()
        ours_out.append(ours(a, b))
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        ref_out.append(ref(a, b))
        ref_s += time.perf_counter() - start
    return ours_s, ref_s, ours_out, ref_out


def bench_ifd(model: str, convs, max_length: int, device: str, rounds: int):
    import numpy as np

    from curate.stages.score.ifd import IFDScorer
    from curate.lib.lm import load_causal_lm
    from curate.stages.score.reference import ifd_one_at_a_time

    scorer = IFDScorer(model, max_length=max_length, device=device)
    ref_model, tok, _ = load_causal_lm(model, device, "float32")
    scorer.score(convs[:4])  # warm-up: lazy initialisation, kernel selection
    ours_s, ref_s, ours, ref = interleaved(
        lambda a, b: scorer.score(convs[a:b])[0]["loss_answer_given_prompt"],
        lambda a, b: [ifd_one_at_a_time(ref_model, tok, c)[0] for c in convs[a:b]], len(convs), rounds)
    diff = float(np.nanmax(np.abs(np.concatenate(ours) - np.concatenate(ref))))
    return len(convs) / ours_s, len(convs) / ref_s, diff


def bench_less(model: str, convs, max_length: int, device: str, dim: int, r: int, work: Path, rounds: int):
    import numpy as np
    import torch

    from curate.lib import less as LS
    from curate.lib.lm import pad_id
    from curate.stages.score.reference import less_features_one_at_a_time

    mods = ["q_proj", "k_proj", "v_proj", "o_proj"]
    ours_model, tok, dev = LS.lora_model(model, r, 4 * r, 0.1, mods, device)
    examples = LS.training_examples(tok, convs, max_length)
    (ckpt,) = LS.warmup(ours_model, examples[:16], pad_id(tok), dev, work, epochs=1, lr=1e-4, batch_size=8)
    state = ckpt.load()
    LS.load_lora(ours_model, state)
    shapes = {n: tuple(p.shape) for n, p in LS.lora_params(ours_model).items()}
    projector = LS.RademacherProjector(shapes, dim, 0, dev)
    projector.project({n: torch.zeros((1, *s), device=dev) for n, s in shapes.items()})  # build the matrix blocks
    features = LS.GradientFeatures(ours_model, tok, dev, projector)
    ref_model, _, _ = LS.lora_model(model, r, 4 * r, 0.1, mods, device, "float32")
    LS.load_lora(ref_model, state)
    features(examples[:4], state)
    ours_s, ref_s, ours, ref = interleaved(
        lambda a, b: features(examples[a:b], state),
        lambda a, b: less_features_one_at_a_time(ref_model, examples[a:b], projector, state), len(examples), rounds)
    cos = float(np.min(np.sum(np.concatenate(ours) * np.concatenate(ref), axis=1)))
    return len(examples) / ours_s, len(examples) / ref_s, cos


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 IFD rows and 16 LESS rows, LoRA r 4")
    ap.add_argument("--model", help="a Hugging Face causal LM folder (default: a tiny random Llama built here)")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--less-rows", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=4, help="ours and the reference alternate over this many slices")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine two threads make both sides' timings erratic)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.less_rows, args.lora_r = 32, 16, 4

    import torch

    from curate.lib.lm import load_tokenizer, pick_device

    if args.threads and not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, short = args.model, None
        else:
            model, short = str(build_bench_llama(Path(tmp) / "bench_llama")), 40  # near character-level tokens: shorter answers
        tok = load_tokenizer(model)
        convs = alpaca_convs(tok, max(args.rows, args.less_rows), args.max_length, short)
        ifd_s, ifd_ref_s, ifd_diff = bench_ifd(model, convs[: args.rows], args.max_length, device, args.rounds)
        print(f"IFD: {ifd_s:.1f} rows/s batched, {ifd_ref_s:.1f} rows/s one at a time "
              f"({ifd_s / ifd_ref_s:.1f}x); max |ΔL(A|Q)| {ifd_diff:.2e}")
        less_s, less_ref_s, less_cos = bench_less(model, convs[: args.less_rows], args.max_length, device, args.dim,
                                                  args.lora_r, Path(tmp) / "less", args.rounds)
        print(f"LESS features (d={args.dim}, LoRA r={args.lora_r}): {less_s:.1f} rows/s vectorised, "
              f"{less_ref_s:.1f} rows/s one backward() each ({less_s / less_ref_s:.1f}x); min cos(ours, ref) {less_cos:.5f}")
    print(json.dumps({
        "bench": "scoring", "rows": len(convs[: args.rows]), "less_rows": len(convs[: args.less_rows]),
        "ifd_rows_s": round(ifd_s, 2), "ifd_ref_rows_s": round(ifd_ref_s, 2), "ifd_ratio": round(ifd_s / ifd_ref_s, 2),
        "less_rows_s": round(less_s, 2), "less_ref_rows_s": round(less_ref_s, 2), "less_ratio": round(less_s / less_ref_s, 2),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model or "random Llama (hidden 256, 4 layers, vocab 32000, 21M parameters)", "max_length": args.max_length,
        "dim": args.dim, "lora_r": args.lora_r, "ifd_max_abs_diff": ifd_diff, "less_min_cos_to_ref": less_cos,
    }))


if __name__ == "__main__":
    main()
