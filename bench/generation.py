"""The same prompts through the pipeline's `respond` stage (Ray actor, cache, shards, DuckDB)
and through one bare `vllm.LLM.chat` call, in one run.

    python bench/generation.py --quick                 # tiny random Llama built here, 200 prompts
    python bench/generation.py --model PATH --prompts 2000 --max-tokens 256    # a real model (GPU)

Both timings include the engine start (the pipeline's engine actor preloads it while the
stream starts), so the ratio measures what the pipeline adds end to end. Bare vLLM runs twice:
with vLLM's defaults, and on CPU also with the engine core in process as the pipeline runs it
(generators/backends/vllm_engine.py); the ratio is against the faster of the two. Prints
figures, the last line one JSON object (keys per ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


RESULT = "bare-result: "  # vLLM writes its own lines to stdout too


def bare(model: str, prompts_file: str, args, in_process: bool) -> tuple[float, int]:
    """One bare run in a fresh Python process (a second engine in the same process would find
    vLLM imported and warm), timed inside it from before `import vllm` to the last output."""
    cmd = [sys.executable, __file__, "--bare", "in_process" if in_process else "defaults", "--model", model,
           "--prompts-file", prompts_file, "--max-tokens", str(args.max_tokens), "--max-model-len", str(args.max_model_len),
           "--dtype", args.dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads([line for line in out.splitlines() if line.startswith(RESULT)][-1][len(RESULT):])
    return result["seconds"], result["tokens"]


def bare_worker(args) -> None:
    prompts = json.loads(Path(args.prompts_file).read_text())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # as VllmBackend does
    start = time.perf_counter()
    if args.bare == "in_process":  # as VllmBackend runs a CPU engine
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager, seed=0)
    params = [SamplingParams(temperature=0.8, top_p=1.0, max_tokens=args.max_tokens) for _ in prompts]
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    print(RESULT + json.dumps({"seconds": elapsed, "tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs)}))


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
    ap.add_argument("--bare", choices=["defaults", "in_process"], help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare_worker(args)
    n = args.prompts or (200 if args.quick else 1000)

    from bench._common import shared_data
    from tiny_llm import build_tiny_llama

    rows = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    prompts = [rows[i % len(rows)]["instruction"] + ("" if i < len(rows) else f" ({i})") for i in range(n)]
    import ray

    with tempfile.TemporaryDirectory(prefix="curate-gen-") as tmp:
        model = args.model or str(build_tiny_llama(Path(tmp) / "tiny"))
        prompts_file = os.path.join(tmp, "prompts.json")
        Path(prompts_file).write_text(json.dumps(prompts))
        bare_s, bare_tokens = bare(model, prompts_file, args, in_process=False)
        print(f"bare vLLM, defaults: {bare_tokens} tokens in {bare_s:.1f} s = {bare_tokens / bare_s:,.0f} tok/s (engine start included)")
        if device() == "cpu":
            inproc_s, inproc_tokens = bare(model, prompts_file, args, in_process=True)
            print(f"bare vLLM, engine in process: {inproc_tokens} tokens in {inproc_s:.1f} s = {inproc_tokens / inproc_s:,.0f} tok/s")
            if inproc_tokens / inproc_s > bare_tokens / bare_s:
                bare_s, bare_tokens = inproc_s, inproc_tokens
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        pipe_s, pipe_tokens = pipeline(model, prompts, args, tmp)
        ray.shutdown()
    print(f"pipeline:  {pipe_tokens} tokens in {pipe_s:.1f} s = {pipe_tokens / pipe_s:,.0f} tok/s (Ray, engine start, shards, DuckDB included)")
    print(json.dumps({"bench": "generation", "rows": n, "pipeline_tok_s": round(pipe_tokens / pipe_s, 1),
                      "bare_tok_s": round(bare_tokens / bare_s, 1), "ratio": round((pipe_tokens / pipe_s) / (bare_tokens / bare_s), 3),
                      "device": device(), "model": args.model or "tiny-random-llama", "max_tokens": args.max_tokens}))


if __name__ == "__main__":
    main()
