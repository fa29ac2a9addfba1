"""IFD scores and LESS gradient features: curate's way against the reference compute pattern on the
same model and rows, in one run, alternating over slices of the rows (a shared machine's load
changes within a run; alternating keeps the ratio fair).

- ours: the stage's defaults (`IFDScorer`, `GradientFeatures`): `scoring_dtype` (bf16 on a GPU
  and on a CPU with bf16 instructions, else fp32), length-sorted batches, losses and logits only
  where they are needed; IFD on a CPU runs its batches on one single-threaded worker per thread
  (`--cpu-parallel batches`, the stage's default) or on torch's threads (`intra_op`);
- the reference (ALGORITHMS.md, stages/score/reference.py): fp32, batch size 1, three passes and
  a per-token log-softmax loop for IFD, one backward() per example for LESS.

Both sides run on the same torch threads (`--threads`; default all cores).

    python bench/scoring.py                          # curate's default model (Gemma 3 270M): 48 IFD rows, 16 LESS rows
    python bench/scoring.py --quick                  # a small random Llama built here, under a minute
    python bench/scoring.py --quick --model default  # Gemma, 6 IFD rows and 3 LESS rows (about 2 minutes)
    python bench/scoring.py --model PATH --rows 2000

Rows are Alpaca examples whose prompt and answer fit `--max-length` tokens (so no row is skipped
on either side). LESS features are Adam-aware, from a one-epoch warmup checkpoint; both sides
share the projector, whose matrix blocks are built before timing. Model loading is not timed.
Agreement with the reference: the largest IFD difference, the Spearman rank correlation of the
IFD scores, the smallest cosine between a row's two LESS features and the largest difference
between the row-to-row cosines the two sets of features give (what LESS matching ranks by).
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


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def bench_ifd(model: str, convs, max_length: int, device: str, dtype: str | None, rounds: int, threads: int | None = None,
              cpu_parallel: str = "batches") -> dict:
    import numpy as np

    from curate.stages.score.ifd import IFDScorer
    from curate.lib.lm import load_causal_lm
    from curate.stages.score.reference import ifd_one_at_a_time

    scorer = IFDScorer(model, max_length=max_length, device=device, dtype=dtype, threads=threads, cpu_parallel=cpu_parallel)
    ref_model, tok, _ = load_causal_lm(model, device, "float32")
    scorer.score(convs[:4])  # warm-up: lazy initialisation, kernel selection
    ours_s, ref_s, ours, ref = interleaved(
        lambda a, b: scorer.score(convs[a:b])[0],
        lambda a, b: [ifd_one_at_a_time(ref_model, tok, c) for c in convs[a:b]], len(convs), rounds)
    ours = {name: np.concatenate([o[name] for o in ours]) for name in ("ifd", "loss_answer_given_prompt", "loss_answer", "loss_prompt")}
    aq, a, q = np.array([r for part in ref for r in part]).T
    ifd_ref = aq / a
    loss_diff = max(float(np.max(np.abs(ours[k] - v))) for k, v in
                    (("loss_answer_given_prompt", aq), ("loss_answer", a), ("loss_prompt", q)))
    return {"ifd_rows_s": len(convs) / ours_s, "ifd_ref_rows_s": len(convs) / ref_s, "dtype": str(scorer.lm.dtype),
            "ifd_cpu_parallel": None if scorer.device != "cpu" else cpu_parallel if scorer.runner.workers or cpu_parallel == "intra_op" else "one thread",
            "ifd_max_abs_diff": float(np.max(np.abs(ours["ifd"] - ifd_ref))), "ifd_loss_max_abs_diff": loss_diff,
            "ifd_spearman": spearman(ours["ifd"], ifd_ref), "ifd_mean": float(np.mean(ifd_ref))}


def bench_less(model: str, convs, max_length: int, device: str, dtype: str | None, dim: int, r: int, work: Path,
               rounds: int) -> dict:
    import numpy as np
    import torch

    from curate.lib import less as LS
    from curate.lib.lm import pad_id
    from curate.stages.score.reference import less_features_one_at_a_time

    mods = ["q_proj", "k_proj", "v_proj", "o_proj"]
    ours_model, tok, dev = LS.lora_model(model, r, 4 * r, 0.1, mods, device, dtype)
    examples = LS.training_examples(tok, convs, max_length)
    (ckpt,) = LS.warmup(ours_model, examples[:8], pad_id(tok), dev, work, epochs=1, lr=1e-4, batch_size=8,
                        max_batch_tokens=1024)
    state = ckpt.load()
    LS.load_lora(ours_model, state)
    shapes = {n: tuple(p.shape) for n, p in LS.lora_params(ours_model).items()}
    projector = LS.RademacherProjector(shapes, dim, 0, dev)
    projector.project({n: torch.zeros((1, *s), device=dev) for n, s in shapes.items()})  # build the matrix blocks
    features = LS.GradientFeatures(ours_model, tok, dev, projector)
    ref_model, _, _ = LS.lora_model(model, r, 4 * r, 0.1, mods, device, "float32")
    LS.load_lora(ref_model, state)
    features(examples[:2], state)
    less_features_one_at_a_time(ref_model, examples[:1], projector, state)
    ours_s, ref_s, ours, ref = interleaved(
        lambda a, b: features(examples[a:b], state),
        lambda a, b: less_features_one_at_a_time(ref_model, examples[a:b], projector, state), len(examples), rounds)
    ours, ref = np.concatenate(ours), np.concatenate(ref)
    cos = np.sum(ours * ref, axis=1)
    sims_ours, sims_ref = ours @ ours.T, ref @ ref.T
    off = ~np.eye(len(ours), dtype=bool)
    return {"less_rows_s": len(examples) / ours_s, "less_ref_rows_s": len(examples) / ref_s,
            "less_cosine_min": float(cos.min()), "less_cosine_mean": float(cos.mean()),
            "less_sim_max_abs_diff": float(np.max(np.abs(sims_ours - sims_ref)[off])),
            "less_sim_spearman": spearman(sims_ours[off], sims_ref[off])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the random Llama (unless --model is given: then 6 IFD rows and 3 LESS rows of at most 40 answer "
                         "words), LoRA r 4, d 512")
    ap.add_argument("--model", default=None,
                    help="a causal LM: `default` (curate's Gemma 3 270M, built on first use; the default), a folder or a hub id")
    ap.add_argument("--random-llama", action="store_true",
                    help="a random Llama built here (hidden 256, 4 layers, vocab 32000) instead of --model")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--less-rows", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-answer-words", type=int, default=None, help="cut answers to this many words")
    ap.add_argument("--dim", type=int, default=1024, help="projected dimension (LESS uses 8192; the matrix is cached)")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--dtype", default=None, help="ours: a torch dtype name; default: the stages' (lib/lm.py scoring_dtype)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=4, help="ours and the reference alternate over this many slices")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for both sides (0: torch's default, all cores)")
    ap.add_argument("--cpu-parallel", default="batches", choices=["batches", "intra_op"],
                    help="ours on a CPU: length batches on single-threaded workers (the stage's default) or torch's threads")
    args = ap.parse_args(argv)
    if args.quick:
        args.random_llama = args.random_llama or args.model is None
        args.rows, args.less_rows = (32, 16) if args.random_llama else (6, 3)
        args.lora_r, args.dim, args.rounds = 4, 512, min(args.rounds, 2)
        args.max_answer_words = args.max_answer_words or 40
    args.model = args.model or "default"

    import torch

    from curate.lib.lm import load_tokenizer, pick_device

    if args.threads and not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_llama:
            model, short = str(build_bench_llama(Path(tmp) / "bench_llama")), 40  # near character-level tokens: shorter answers
            name = "random Llama (hidden 256, 4 layers, vocab 32000, 21M parameters)"
        else:
            model, short = args.model, args.max_answer_words
            name = "default (Gemma 3 270M, curate/models.py)" if args.model == "default" else args.model
        tok = load_tokenizer(model)
        convs = alpaca_convs(tok, max(args.rows, args.less_rows), args.max_length, short)
        ifd = bench_ifd(model, convs[: args.rows], args.max_length, device, args.dtype, args.rounds, args.threads or None,
                        args.cpu_parallel)
        print(f"IFD ({ifd['dtype']}): {ifd['ifd_rows_s']:.2f} rows/s batched, {ifd['ifd_ref_rows_s']:.2f} rows/s "
              f"fp32 one at a time ({ifd['ifd_rows_s'] / ifd['ifd_ref_rows_s']:.1f}x); max |ΔIFD| {ifd['ifd_max_abs_diff']:.2e} "
              f"(mean IFD {ifd['ifd_mean']:.3f}), max |Δloss| {ifd['ifd_loss_max_abs_diff']:.2e}, "
              f"Spearman {ifd['ifd_spearman']:.4f}", flush=True)
        less = bench_less(model, convs[: args.less_rows], args.max_length, device, args.dtype, args.dim, args.lora_r,
                          Path(tmp) / "less", args.rounds)
        print(f"LESS features (d={args.dim}, LoRA r={args.lora_r}): {less['less_rows_s']:.2f} rows/s batched, "
              f"{less['less_ref_rows_s']:.2f} rows/s fp32 one backward() each "
              f"({less['less_rows_s'] / less['less_ref_rows_s']:.1f}x); cos(ours, ref) min {less['less_cosine_min']:.5f}, "
              f"row-to-row cosines max |Δ| {less['less_sim_max_abs_diff']:.2e}, Spearman {less['less_sim_spearman']:.4f}")
    rnd = lambda d: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    print(json.dumps({
        "bench": "scoring", "rows": len(convs[: args.rows]), "less_rows": len(convs[: args.less_rows]),
        **rnd(ifd), "ifd_ratio": round(ifd["ifd_rows_s"] / ifd["ifd_ref_rows_s"], 2),
        **rnd(less), "less_ratio": round(less["less_rows_s"] / less["less_ref_rows_s"], 2),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "model": name, "max_length": args.max_length, "max_answer_words": short, "dim": args.dim, "lora_r": args.lora_r,
    }))


if __name__ == "__main__":
    main()
