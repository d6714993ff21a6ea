"""Scale-out on one machine: the same batch with 1 worker and with 2 (torchrun ranks, or two independent
processes sharing DEST through claims), as a ratio of wall times.

    python -m benchmarks.scaleout --images 48 --repeats 3

Each configuration runs the real command (`python -m cassr_cli upscale`) on the same inputs into a fresh
DEST, in alternating order (A B C A B C …) so that a busy machine slows them alike; the median wall time
per configuration and the speed-up over one single-threaded worker are printed as Markdown. Wall time
includes starting Python, importing torch and loading the model, as a user sees it.

Workload: stage 1 only (``--steps 0``) with the real Real-ESRGAN compact model from
``../shared/weights`` (spandrel loads it like any user model) on the low-resolution BSD100 images from
``../shared/testdata`` (×4), which makes many small images: the case where per-process overhead shows.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CONFIGS = {  # name: (workers, how they start, torch threads each, label)
    "one": (1, "plain", 1, "1 worker, 1 thread"),
    "one-2t": (1, "plain", 2, "1 worker, 2 threads"),
    "torchrun": (2, "torchrun", 1, "2 workers (torchrun), 1 thread each"),
    "processes": (2, "processes", 1, "2 processes (claims), 1 thread each"),
}


def run(kind: str, workers: int, threads: int, src: Path, dest: Path, model: Path) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of all processes)`` of one run."""
    args = ["upscale", str(src), str(dest), "--activation", str(model), "--steps", "0", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("CASSR_")}
    cassr = [sys.executable, "-m", "cassr_cli"]
    cpu_before = _children_cpu()
    start = time.perf_counter()
    # Every worker in its own session, as torchrun starts its ranks: with the kernel's autogroup
    # scheduling a session is what competes for CPU with the other jobs of a shared machine.
    if kind == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(workers), "-m", "cassr_cli", *args]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    else:
        procs = [subprocess.Popen([*cassr, *args], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
                 for _ in range(workers)]  # fmt: skip
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"{kind} run failed with exit {proc.returncode}")
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    written = len(list(dest.glob("*.png")))
    if written != len(list(src.glob("*.png"))):
        raise SystemExit(f"{kind}: {written} outputs for {len(list(src.glob('*.png')))} inputs")
    return seconds, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=SHARED / "weights" / "realesrgan" / "realesr-animevideov3.pth")
    parser.add_argument("--source", type=Path, default=SHARED / "testdata" / "bsd100_x4")
    parser.add_argument("--configs", default="one,torchrun,processes", help="comma-separated, from: " + ", ".join(CONFIGS))
    options = parser.parse_args()
    names = [n.strip() for n in options.configs.split(",")]
    inputs = sorted(options.source.glob("*_LR.png"))[: options.images]
    if not inputs or not options.model.exists():
        raise SystemExit("needs ../shared (BSD100 LR images and the Real-ESRGAN compact model)")
    times: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="cassr-scaleout-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for path in inputs:
            shutil.copy(path, src / path.name)
        for repeat in range(options.repeats):
            for name in names:
                workers, kind, threads, _ = CONFIGS[name]
                dest = Path(tmp) / f"out-{repeat}-{kind}-{threads}"
                seconds, cpu = run(kind, workers, threads, src, dest, options.model)
                times[name].append(seconds)
                cpus[name].append(cpu)
                print(f"  {CONFIGS[name][3]}: {seconds:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)
                shutil.rmtree(dest)
        load.append(os.getloadavg()[0])
    base = statistics.median(times[names[0]])
    print(f"{len(inputs)} images, stage 1 (--steps 0, {options.model.name}), {options.repeats} runs each, "
          f"load average {load[0]:.1f} → {load[1]:.1f} on {os.cpu_count()} CPUs\n")  # fmt: skip
    print(f"| configuration | median wall s | runs | speed-up vs {CONFIGS[names[0]][3]} | median CPU s (all processes) |")
    print("|---|---|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {CONFIGS[name][3]} | {median:.1f} | {runs} | {base / median:.2f}× | {statistics.median(cpus[name]):.1f} |")


if __name__ == "__main__":
    main()
