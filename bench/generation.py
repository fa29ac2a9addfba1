"""The same prompts through the pipeline's `respond` stage (Ray actor, cache, shards, DuckDB)
and through one bare `vllm.LLM.chat` call, in one run.

    python bench/generation.py                         # tiny random Llama built here, 4,000 prompts x 128 tokens
    python bench/generation.py --quick                 # 200 prompts x 32 tokens: mostly the engine start
    python bench/generation.py --repeat 4              # four rounds, medians; the order alternates (timings here swing +-20%)
    python bench/generation.py --model PATH --prompts 2000 --max-tokens 256    # a real model (GPU)
    python bench/generation.py --model default --prompts 256 --max-tokens 64   # curate's default model (Gemma 3 270M, bf16)
    python bench/generation.py --shape llama-3.2-1b --prompts 2000 --max-tokens 256   # its shape, random weights

Both timings include the engine start (the pipeline's engine actor preloads it while the
stream starts), so the ratio measures what the pipeline adds end to end. Bare vLLM runs twice:
with vLLM's defaults, and on CPU also with the engine core in process as the pipeline runs it
(generators/backends/vllm_engine.py); the ratio is against the faster of the two (on CPU with
--quick, only the in-process one, the faster there).
`generating_ratio` leaves the engine start out on both sides: bare, the `chat` call; the
pipeline, from the engine being loaded with work to the last row stored. Prints
figures, the last line one JSON object (keys per ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()  # asks the driver; no CUDA context in this process during the runs


def device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if has_gpu() else "cpu"


RESULT = "bare-result: "  # vLLM writes its own lines to stdout too


def bare(model: str, prompts_file: str, args, in_process: bool, work: str) -> dict:
    """One bare run in a fresh Python process (a second engine in the same process would find
    vLLM imported and warm), timed inside it from before `import vllm` to the last output.
    vLLM's own log goes to `--log` (default: a file in the run's temp folder), shown on failure."""
    cmd = [sys.executable, __file__, "--bare", "in_process" if in_process else "defaults", "--model", model,
           "--prompts-file", prompts_file, "--max-tokens", str(args.max_tokens), "--max-model-len", str(args.max_model_len),
           "--dtype", args.dtype, "--enforce-eager" if args.enforce_eager else "--no-enforce-eager"]
    log = args.log or os.path.join(work, "bare-vllm.log")
    # Both streams to the file, not pipes: a process the run leaves behind (a compile worker,
    # an engine core) that holds a pipe open would keep the reader waiting after the run ends.
    with open(log, "a") as out:
        start = out.tell()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    with open(log) as f:
        f.seek(start)
        text = f.read()
    if code:
        raise SystemExit(f"bare vLLM failed (exit {code}); the end of its log ({log}):\n{text[-4000:]}")
    return json.loads([line for line in text.splitlines() if line.startswith(RESULT)][-1][len(RESULT):])


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
    engine, steps = llm.llm_engine, {"n": 0, "s": 0.0}
    step = engine.step

    def timed_step():  # the same measure as the pipeline's engine loop (busy seconds, steps)
        t = time.perf_counter()
        try:
            return step()
        finally:
            steps["n"] += 1
            steps["s"] += time.perf_counter() - t

    engine.step = timed_step
    ready = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    end = time.perf_counter()
    print(RESULT + json.dumps({"seconds": end - start, "generating_s": end - ready, "steps": steps["n"], "busy_s": steps["s"],
                               "tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs)}), flush=True)


def pipeline(model: str, prompts: list[str], args, tmp: str) -> dict:
    import duckdb

    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = Path(tmp) / "prompts.jsonl"
    src.write_text("\n".join(json.dumps({"instruction": p}) for p in prompts) + "\n")
    db = os.path.join(tmp, "gen.duckdb")
    backend = {"kind": "vllm", "model": model, "dtype": args.dtype, "max_model_len": args.max_model_len,
               "enforce_eager": args.enforce_eager, "preload": True}
    respond = {"backend": backend, "max_tokens": args.max_tokens, "temperature": 0.8}
    if args.batch_size:
        respond["batch_size"] = args.batch_size
    if args.concurrency:
        respond["resources"] = {"concurrency": args.concurrency}
    config = load_config(None, input=[str(src)], db=db, shard_size=args.shard_size, ingest={"require_response": False},
                         stages=[{"respond": respond}])
    start = time.perf_counter()
    run(config, progress="off")
    elapsed = time.perf_counter() - start
    con = duckdb.connect(db, read_only=True)
    tokens = con.execute("SELECT sum((meta->>'completion_tokens')::BIGINT) FROM samples WHERE origin = 'response'").fetchone()[0]
    # Generating: from the moment the engine was loaded and had work to the last row stored.
    engine = con.execute("SELECT load_seconds, epoch(stream_end_at) - epoch(greatest(ready_at, first_request_at)), "
                         "busy_seconds, peak_in_flight, steps FROM llm_engines").fetchone()
    con.close()
    return {"seconds": elapsed, "tokens": int(tokens or 0), "load_s": engine[0], "generating_s": engine[1],
            "busy_s": engine[2], "peak_in_flight": engine[3], "steps": engine[4]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", help="a local model folder, or `default` (curate's built-in Gemma 3 270M, curate/models.py); "
                                    "without it: a tiny random Llama built here")
    ap.add_argument("--shape", help="build a random Llama of this published shape instead (tests/tiny_llm.py SHAPES)")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--max-tokens", type=int, help="tokens per response (default 128, --quick 32)")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--dtype", help="default: float32 on CPU, bfloat16 on a GPU")
    ap.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction,
                    help="default: eager on CPU, CUDA graphs (vLLM's default) on a GPU")
    ap.add_argument("--batch-size", type=int, help="rows per respond call (default: the stage's own)")
    ap.add_argument("--concurrency", type=int, help="respond actors (default: the stage's own)")
    ap.add_argument("--shard-size", type=int, default=1000, help="rows per shard (the config default)")
    ap.add_argument("--log", help="append the bare vLLM runs' own log here (default: a temp file, shown on failure)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (bare then pipeline, then the other way round); the JSON line gives medians")
    ap.add_argument("--bare", choices=["defaults", "in_process"], help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare_worker(args)
    # A throughput bench: by default long enough (~45 s of generating here) that the engine
    # start, which both sides pay once, does not decide the ratio; --quick is mostly the start.
    n = args.prompts or (200 if args.quick else 4000)
    args.max_tokens = args.max_tokens or (32 if args.quick else 128)
    args.on_gpu = on_gpu = has_gpu()
    from curate.models import is_default, resolve_model

    # The default model is stored in bf16 (and this CPU's AVX512-BF16 runs it faster than fp32).
    args.dtype = args.dtype or ("bfloat16" if on_gpu or is_default(args.model) else "float32")
    if is_default(args.model):
        args.model_name, args.model = args.model, resolve_model(args.model)  # both sides load the built folder
    args.enforce_eager = (not on_gpu) if args.enforce_eager is None else args.enforce_eager

    from bench._common import shared_data
    from tiny_llm import build_random_llama, build_tiny_llama

    rows = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    prompts = [rows[i % len(rows)]["instruction"] + ("" if i < len(rows) else f" ({i})") for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="curate-gen-") as tmp:
        if args.model:
            model = args.model
        elif args.shape:
            words = [w for r in rows for w in (r["instruction"] + " " + r.get("output", "")).split()]
            t = time.perf_counter()
            model = str(build_random_llama(Path(tmp) / args.shape, args.shape, words))
            print(f"built a random {args.shape} in {time.perf_counter() - t:.0f} s")
        else:
            model = str(build_tiny_llama(Path(tmp) / "tiny"))
        prompts_file = os.path.join(tmp, "prompts.json")
        Path(prompts_file).write_text(json.dumps(prompts))
        rounds = []
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"round {i + 1} of {args.repeat}")
            work = os.path.join(tmp, f"round{i}")
            os.makedirs(work)
            rounds.append(one_round(model, prompts_file, prompts, args, work, pipeline_first=i % 2 == 1))
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    figures = {"bench": "generation", "rows": n, "pipeline_tok_s": round(median["pipeline_tok_s"], 1),
               "bare_tok_s": round(median["bare_tok_s"], 1), "ratio": round(median["ratio"], 3),
               "generating_ratio": round(median["generating_ratio"], 3),
               "engine_start_s": {"pipeline": round(median["pipeline_start_s"], 1), "bare": round(median["bare_start_s"], 1)}}
    if args.repeat > 1:  # medians above; each round's pair here (bare and pipeline run back to back)
        figures["rounds"] = [{"ratio": round(r["ratio"], 3), "generating_ratio": round(r["generating_ratio"], 3)} for r in rounds]
    print(json.dumps({**figures, "device": device(), "model": getattr(args, "model_name", None) or args.model or (f"random-{args.shape}" if args.shape else "tiny-random-llama"),
                      "max_tokens": args.max_tokens, "dtype": args.dtype, "enforce_eager": args.enforce_eager}))


def one_round(model: str, prompts_file: str, prompts: list[str], args, work: str, pipeline_first: bool = False) -> dict:
    """Bare vLLM and the pipeline on the same prompts, one after the other (`pipeline_first`
    swaps the order: --repeat alternates it, so a drift in the machine's speed falls on both
    sides); prints both and returns the figures."""
    import ray

    runs, pipe = {}, {}
    on_cpu = not args.on_gpu

    def run_bare() -> None:
        if not (on_cpu and args.quick):  # on CPU the spawned engine core is the slower bare setup (~30 s more)
            runs["defaults"] = bare(model, prompts_file, args, in_process=False, work=work)
        if on_cpu:
            runs["engine in process"] = bare(model, prompts_file, args, in_process=True, work=work)
        for name, r in runs.items():
            print(f"bare vLLM, {name}: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:,.0f} tok/s "
                  f"end to end; generating {r['generating_s']:.1f} s = {r['tokens'] / r['generating_s']:,.0f} tok/s "
                  f"({r['steps']} engine steps, {r['busy_s']:.1f} s)")

    def run_pipeline() -> None:
        from curate.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        try:
            pipe.update(pipeline(model, prompts, args, work))
        finally:
            ray.shutdown()
        print(f"pipeline: {pipe['tokens']} tokens in {pipe['seconds']:.1f} s = {pipe['tokens'] / pipe['seconds']:,.0f} tok/s end to end "
              f"(Ray, engine start {pipe['load_s']:.1f} s, shards, DuckDB included); generating {pipe['generating_s']:.1f} s = "
              f"{pipe['tokens'] / pipe['generating_s']:,.0f} tok/s ({pipe['steps']} engine steps, {pipe['busy_s']:.1f} s; "
              f"up to {pipe['peak_in_flight']} requests in flight)")

    for step in ((run_pipeline, run_bare) if pipeline_first else (run_bare, run_pipeline)):
        step()
    best = max(runs.values(), key=lambda r: r["tokens"] / r["seconds"])
    tok_s, bare_tok_s = pipe["tokens"] / pipe["seconds"], best["tokens"] / best["seconds"]
    return {"pipeline_tok_s": tok_s, "bare_tok_s": bare_tok_s, "ratio": tok_s / bare_tok_s,
            "generating_ratio": (pipe["tokens"] / pipe["generating_s"]) / (best["tokens"] / best["generating_s"]),
            "pipeline_start_s": pipe["load_s"], "bare_start_s": best["seconds"] - best["generating_s"]}


if __name__ == "__main__":
    main()
