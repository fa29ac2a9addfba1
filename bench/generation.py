"""The same prompts through the pipeline's `respond` stage (Ray actor, cache, shards, DuckDB)
and through one bare `vllm.LLM.chat` call, in one run.

    python bench/generation.py --quick                 # tiny random Llama built here, 200 prompts
    python bench/generation.py --model PATH --prompts 2000 --max-tokens 256    # a real model (GPU)

Both timings include the engine start (the pipeline's engine actor preloads it while the
stream starts), so the ratio measures what the pipeline adds end to end. Prints figures, the last line one JSON
object (keys per ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def bare(model: str, prompts: list[str], args) -> tuple[float, int]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # as VllmBackend does
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager, seed=0)
    params = [SamplingParams(temperature=0.8, top_p=1.0, max_tokens=args.max_tokens) for _ in prompts]
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    del llm
    return elapsed, tokens


def pipeline(model: str, prompts: list[str], args, tmp: str) -> tuple[float, int]:
    import duckdb

    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = Path(tmp) / "prompts.jsonl"
    src.write_text("\n".join(json.dumps({"instruction": p}) for p in prompts) + "\n")
    db = os.path.join(tmp, "gen.duckdb")
    backend = {"kind": "vllm", "model": model, "dtype": args.dtype, "max_model_len": args.max_model_len,
               "enforce_eager": args.enforce_eager, "preload": True}
    config = load_config(None, input=[str(src)], db=db, shard_size=len(prompts), ingest={"require_response": False},
                         stages=[{"respond": {"backend": backend, "max_tokens": args.max_tokens, "temperature": 0.8,
                                              "batch_size": len(prompts)}}])
    start = time.perf_counter()
    run(config, progress="off")
    elapsed = time.perf_counter() - start
    con = duckdb.connect(db, read_only=True)
    tokens = con.execute("SELECT sum((meta->>'completion_tokens')::BIGINT) FROM samples WHERE origin = 'response'").fetchone()[0]
    con.close()
    return elapsed, int(tokens or 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", help="a local model folder (default: a tiny random Llama built here)")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--enforce-eager", action="store_true", default=True)
    args = ap.parse_args()
    n = args.prompts or (200 if args.quick else 1000)

    from bench._common import shared_data
    from tiny_llm import build_tiny_llama

    rows = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    prompts = [rows[i % len(rows)]["instruction"] + ("" if i < len(rows) else f" ({i})") for i in range(n)]
    import ray

    with tempfile.TemporaryDirectory(prefix="curate-gen-") as tmp:
        model = args.model or str(build_tiny_llama(Path(tmp) / "tiny"))
        bare_s, bare_tokens = bare(model, prompts, args)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        pipe_s, pipe_tokens = pipeline(model, prompts, args, tmp)
        ray.shutdown()
    print(f"bare vLLM: {bare_tokens} tokens in {bare_s:.1f} s = {bare_tokens / bare_s:,.0f} tok/s (engine start included)")
    print(f"pipeline:  {pipe_tokens} tokens in {pipe_s:.1f} s = {pipe_tokens / pipe_s:,.0f} tok/s (Ray, engine start, shards, DuckDB included)")
    print(json.dumps({"bench": "generation", "rows": n, "pipeline_tok_s": round(pipe_tokens / pipe_s, 1),
                      "bare_tok_s": round(bare_tokens / bare_s, 1), "ratio": round((pipe_tokens / pipe_s) / (bare_tokens / bare_s), 3),
                      "device": device(), "model": args.model or "tiny-random-llama", "max_tokens": args.max_tokens}))


if __name__ == "__main__":
    main()
