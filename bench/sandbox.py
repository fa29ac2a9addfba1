"""Verifier sandbox: executions/s for a trivial program and a ~100 ms CPU-bound one, and the
per-execution cost of each isolation layer.

    python bench/sandbox.py --quick      # 200 + 40 (+ 100 cold) executions, 15 rounds per layer: under a minute
    python bench/sandbox.py              # 1,000 + 200 (+ 500 cold) executions, 40 rounds per layer

Throughput runs over the sandbox's default pool (2 slots per core) with the full tier and warm
jails (each execution a fork of the slot's zygote); `trivial_cold_exec_per_s` is the same with a
jail started per execution (`zygote=False`, the design before warm jails). The reference is the
unisolated way (SelfCodeAlign's local fallback, minus its in-process guard): one plain
`python -c` per program, as many in parallel. Layer overheads are medians of single executions,
the configurations interleaved round by round so that machine noise hits all alike; each layer's
figure is the difference from the cold configuration without it (so it can be noisy, even
slightly negative); `total` is the whole cold tier-A execution, `warm_total` the tier-A execution
forked from a warm jail, and `tier_c_total` / `tier_c_warm_total` the same without bubblewrap.
The last line is one JSON object (../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.verify.judge import judge, verify_programs  # noqa: E402
from curate.stages.verify.plan import plan_tests  # noqa: E402
from curate.stages.verify.sandbox import Limits, Sandbox  # noqa: E402

TRIVIAL = ("def f():\n    return 1\n", "assert f() == 1")
CPU_100MS = ("import time\ndef f():\n    t = time.process_time()\n    while time.process_time() - t < 0.1:\n        pass\n"
             "    return 1\n", "assert f() == 1")
# layer → layers switched off; each configuration adds one layer to the one before
LAYERS = [("runner", ("bwrap", "uid", "seccomp", "cgroups")), ("uid", ("bwrap", "seccomp", "cgroups")),
          ("bwrap", ("seccomp", "cgroups")), ("seccomp", ("cgroups",)), ("cgroups", ())]


def throughput(sandbox: Sandbox, program: tuple[str, str], n: int) -> float:
    start = time.perf_counter()
    verdicts = verify_programs(sandbox, [program] * n)
    seconds = time.perf_counter() - start
    failed = [v for v in verdicts if not v.passed]
    if failed:
        raise SystemExit(f"{len(failed)} of {n} executions failed: {failed[0]}")
    return n / seconds


def unsandboxed_throughput(python: str, program: tuple[str, str], n: int, workers: int) -> float:
    source = program[0] + "\n" + program[1] + "\n"

    def one(_):
        return subprocess.run([python, "-I", "-S", "-c", source], capture_output=True, timeout=30).returncode

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(one, range(n)))
    assert codes == [0] * n
    return n / (time.perf_counter() - start)


def layer_overheads(rounds: int, python: str) -> tuple[dict[str, float], dict[str, float]]:
    payload = plan_tests(TRIVIAL[1]).payload(TRIVIAL[0])
    sandboxes = {name: Sandbox(Limits(), slots=1, allow_unsandboxed=True, disable=off, zygote=False) for name, off in LAYERS}
    sandboxes["warm"] = Sandbox(Limits(), slots=1)
    for name, warm in (("tier_c", False), ("tier_c_warm", True)):  # the jail without bubblewrap, beside the chain
        fallback = Sandbox(Limits(), slots=1, allow_unsandboxed=True, disable=("bwrap",), zygote=warm)
        if fallback.tier == "C":
            sandboxes[name] = fallback
        else:
            fallback.close()
    for sb in sandboxes.values():  # warm jails start on first use
        sb.run(payload)
    walls: dict[str, list[float]] = {"python_start": [], **{name: [] for name in sandboxes}}
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
            walls["python_start"].append((time.perf_counter() - start) * 1000)
            for name, sb in sandboxes.items():
                result = sb.run(payload)
                assert judge(plan_tests(TRIVIAL[1]), result).passed, result
                walls[name].append(result.wall_ms)
    finally:
        for sb in sandboxes.values():
            sb.close()
    medians = {name: statistics.median(w) for name, w in walls.items()}
    overhead, previous = {"python_start": medians["python_start"]}, medians["python_start"]
    for name, _ in LAYERS:
        overhead[name] = medians[name] - previous
        previous = medians[name]
    overhead["total"] = medians["cgroups"]
    overhead["warm_total"] = medians["warm"]
    for name in ("tier_c", "tier_c_warm"):
        if name in medians:
            overhead[name + "_total"] = medians[name]
    return {k: round(v, 1) for k, v in overhead.items()}, {k: round(v, 1) for k, v in medians.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_trivial, n_cpu, rounds = (200, 40, 15) if args.quick else (1000, 200, 40)
    n_cold = n_trivial // 2

    with Sandbox(Limits()) as sandbox:
        print(f"tier {sandbox.tier}: layers {', '.join(sandbox.layers)}; {sandbox.size} slots; interpreter {sandbox.python}")
        throughput(sandbox, TRIVIAL, 8)  # warm-up
        trivial = throughput(sandbox, TRIVIAL, n_trivial)
        print(f"trivial program     {trivial:7.1f} executions/s ({n_trivial})")
        cpu = throughput(sandbox, CPU_100MS, n_cpu)
        print(f"100 ms CPU program  {cpu:7.1f} executions/s ({n_cpu})")
        bare = unsandboxed_throughput(sandbox.python, TRIVIAL, n_trivial, sandbox.size)
        print(f"trivial, unsandboxed python -c: {bare:7.1f} executions/s")
        tier, layers, slots, python = sandbox.tier, sandbox.layers, sandbox.size, sandbox.python
    with Sandbox(Limits(), zygote=False) as cold_sandbox:
        throughput(cold_sandbox, TRIVIAL, 8)
        cold = throughput(cold_sandbox, TRIVIAL, n_cold)
        print(f"trivial, a jail started per execution (zygote=False): {cold:7.1f} executions/s ({n_cold})")
    overhead, medians = layer_overheads(rounds, python)
    print("median wall per execution (ms), each cold configuration adding one layer, then warm:", medians)
    print(json.dumps({
        "bench": "sandbox", "rows": n_trivial + n_cpu + n_cold,
        "trivial_exec_per_s": round(trivial, 1),
        "cpu100ms_exec_per_s": round(cpu, 1),
        "trivial_cold_exec_per_s": round(cold, 1),
        "overhead_ms": overhead,
        "tier": tier,
        "layers": layers, "slots": slots,
        "unsandboxed_trivial_exec_per_s": round(bare, 1),
        "ratio": round(trivial / bare, 2),
    }))


if __name__ == "__main__":
    main()
