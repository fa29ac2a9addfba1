"""Pack vLLM, Ray and DuckDB for a GPU machine that has CUDA PyTorch but no package registry.

    python bench/offline_gpu/bundle.py --vllm 0.26.0 --pin apache-tvm-ffi==0.1.11 --image-packages pkgs.txt --out .gpu

Resolves the wheels those three need for CPython 3.12 on x86-64 Linux, leaves out the packages
the machine already has (`--image-packages`: names, whitespace-separated, e.g. from `pip list`
there) and the GPU kernel libraries a Llama does not need on Hopper (the `SKIP` list), installs
the rest into one folder, trims what the benchmark never loads (FlashAttention 2, Ray's Java and
RL libraries), and writes it as an xz tarball split into parts small enough to carry one per
call (`out/part1`, `part2`, ...). run.sh beside this unpacks them there. Pick the vLLM release
whose `torch==` pin matches the machine's torch: its kernels are built against that torch.
The walk takes the first version it meets of each package; `--pin` settles a conflict it does
not see (vLLM 0.26 pins apache-tvm-ffi 0.1.10 while the xgrammar it takes needs 0.1.11).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Kernel libraries and media packages vLLM lists that a Llama on a Hopper GPU does not import
# (FlashAttention 3 ships inside vLLM; run.sh turns the FlashInfer sampler off).
SKIP = {canonicalize_name(n) for n in """torch torchaudio torchvision torchcodec pynvvideocodec flashinfer-python
    flashinfer-cubin tilelang nvidia-cudnn-frontend nvtx fastsafetensors nvidia-cutlass-dsl quack-kernels
    tokenspeed-mla humming-kernels numba""".split()}
TRIM = ["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", "vllm/vllm-rs", "vllm/third_party/fmha_sm100",
        "ray/jars", "ray/rllib", "ray/serve", "ray/train", "ray/tune", "ray/llm"]
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    arg for tag in ("manylinux_2_5", "manylinux_2_12", "manylinux_2_17", "manylinux_2_24", "manylinux_2_26",
                    "manylinux_2_27", "manylinux_2_28", "manylinux_2_31", "manylinux_2_34", "manylinux_2_35",
                    "manylinux1", "manylinux2014") for arg in ("--platform", f"{tag}_x86_64")]
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
          "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "extra": ""}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q"], check=True)


def closure(roots: list[str], present: set[str], scratch: Path) -> dict[str, str]:
    """name -> version of every wheel the roots need that `present` lacks, level by level from
    each wheel's metadata (pip's resolver would also resolve torch and its CUDA libraries)."""
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        wanted: dict[str, Requirement] = {}
        for r in todo:
            name = canonicalize_name(r.name)
            if r.marker and not r.marker.evaluate(TARGET):
                continue
            if name not in present and name not in SKIP and name not in found:
                wanted.setdefault(name, r)
        if not wanted:
            return found
        report = scratch / "report.json"
        pip("install", "--dry-run", "--no-deps", "--ignore-installed", *PLATFORM, "--target", str(scratch / "t"),
            "--report", str(report), *map(str, wanted.values()))
        todo = []
        for item in json.loads(report.read_text())["install"]:
            meta = item["metadata"]
            name = canonicalize_name(meta["name"])
            found[name] = meta["version"]
            extras = wanted[name].extras if name in wanted else set()
            for dep in map(Requirement, meta.get("requires_dist") or []):
                if dep.marker and not any(dep.marker.evaluate({**TARGET, "extra": e}) for e in {"", *extras}):
                    continue
                todo.append(dep)
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm", required=True)
    ap.add_argument("--ray", default="2.60.0")
    ap.add_argument("--duckdb", default="2.0.1")
    ap.add_argument("--pin", action="append", default=[], help="NAME==VERSION taken before any other version")
    ap.add_argument("--image-packages", required=True, help="file of package names the GPU machine already has")
    ap.add_argument("--out", required=True)
    ap.add_argument("--part-mib", type=int, default=59, help="a call carries 64 MiB, the checkout included")
    args = ap.parse_args()
    present = {canonicalize_name(n) for n in Path(args.image_packages).read_text().split()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        roots = [*args.pin, f"vllm=={args.vllm}", f"ray=={args.ray}", f"duckdb=={args.duckdb}"]
        wheels = closure(roots, present, scratch)
        print(f"{len(wheels)} wheels: " + ", ".join(f"{n}=={v}" for n, v in sorted(wheels.items())))
        pip("download", "--no-deps", *PLATFORM, "-d", str(scratch / "w"), *(f"{n}=={v}" for n, v in wheels.items()))
        site = scratch / "gpusite"
        pip("install", "--no-index", "--no-deps", "--no-compile", *PLATFORM, "--target", str(site),
            *map(str, (scratch / "w").glob("*.whl")))
        for path in map(site.joinpath, TRIM):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        tarball = scratch / "gpusite.tar.xz"
        subprocess.run(f"tar -cf - -C {scratch} gpusite | xz -T0 -6 > {tarball}", shell=True, check=True)
        part, size = 0, args.part_mib << 20
        with open(tarball, "rb") as f:
            while chunk := f.read(size):
                part += 1
                (out / f"part{part}").write_bytes(chunk)
    print(f"{part} parts of at most {args.part_mib} MiB in {out}")


if __name__ == "__main__":
    main()
