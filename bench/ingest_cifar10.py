"""Benchmark: ingest CIFAR-10 (60,000 JPEGs in a .tar.gz) into data/prepared/.

Target (issue 5): <= 60 s wall clock on 2 cores, peak memory < 1 GB (main process plus its decoding
workers, sampled every 20 ms). Prints a table and writes JSON to bench/results/.

    python bench/ingest_cifar10.py [--archive PATH] [--workers N] [--image-size 32] [--repeat 1]

The archive defaults to ../shared/datasets/cifar10-jpg.tar.gz beside the project; without it the
benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# ../shared/datasets beside the project (or beside the folder of its worktree)
DEFAULT_ARCHIVE = next((p for p in (ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz",
                                    ROOT.parents[1] / "shared" / "datasets" / "cifar10-jpg.tar.gz") if p.exists()),
                       ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz")


class PeakMemory:
    """Peak of the summed RSS of this process and all its children, sampled in a thread; also the CPU
    time of the children (the decoding workers are the forkserver's children, never reaped by this
    process, so os.times() does not see them)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_main = 0
        self.children_cpu: dict[int, float] = {}  # pid -> user + system seconds, as last sampled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                total = main
                for child in self.proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                        times = child.cpu_times()
                        self.children_cpu[child.pid] = times.user + times.system
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak = max(self.peak, total)
            self.peak_main = max(self.peak_main, main)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ingest_cifar10.json")
    args = parser.parse_args()
    if not args.archive.exists():
        print(f"skipped: {args.archive} not found (the benchmark needs the shared CIFAR-10 archive)")
        return 0

    from tasks.ingest import ingest
    from tasks.layout import Layout
    from tasks.params import load_params

    params = load_params(Path("/nonexistent/params.yaml"), [
        "data.source=archive", f"data.path={args.archive}", f"data.workers={args.workers}",
        f"data.image_size={args.image_size}"], check_zoo=False)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="zooflow-bench-") as tmp:
            started = time.perf_counter()
            cpu0 = os.times()
            with PeakMemory() as mem:
                summary = ingest(params, Layout(Path(tmp)))
            wall = time.perf_counter() - started
            cpu1 = os.times()
            cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + sum(mem.children_cpu.values())
            images = sum(summary["counts"].values())
            runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(mem.peak / 2**20, 1),
                         "peak_rss_main_mb": round(mem.peak_main / 2**20, 1), "images": images,
                         "images_per_s": round(images / wall), "counts": summary["counts"],
                         "bad_files": summary["bad_files"], "data_sha256": summary["data_sha256"]})
    best = min(runs, key=lambda r: r["wall_s"])
    result = {
        "benchmark": "ingest cifar10-jpg.tar.gz -> data/prepared",
        "archive": str(args.archive),
        "image_size": args.image_size,
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_1_5_15min": os.getloadavg(),  # the machine is shared: read timings with it
        "python": platform.python_version(),
        "machine": platform.machine(),
        "targets": {"wall_s": 60, "peak_rss_mb": 1024},
        "runs": runs,
        "best": best,
        "meets_targets": best["wall_s"] <= 60 and max(r["peak_rss_mb"] for r in runs) < 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"ingest CIFAR-10 from {args.archive.name}: {best['images']} images, {result['workers']} workers, "
          f"{result['cores']} cores")
    print(f"{'run':>4} {'wall s':>8} {'cpu s':>8} {'img/s':>8} {'peak RSS MB':>12} {'main RSS MB':>12}")
    for i, r in enumerate(runs, 1):
        print(f"{i:>4} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['images_per_s']:>8} {r['peak_rss_mb']:>12.1f} "
              f"{r['peak_rss_main_mb']:>12.1f}")
    print(f"target: <= 60 s, < 1024 MB -> {'met' if result['meets_targets'] else 'NOT met'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
