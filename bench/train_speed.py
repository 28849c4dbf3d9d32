"""Training throughput: zooflow's engine vs the usual DataLoader + PIL loop vs a bare loop.

Same model, batch size, optimiser (SGD momentum), augmentation (random crop with 4-pixel zero
padding, horizontal flip, normalise) and number of timed steps, in one process:

- zooflow    `tasks.train.train` itself (uint8 split in device memory, `BatchAugmenter`), throughput
             of its timed training steps as it reports them in history.json (val and checkpoint
             writing are outside that timing);
- reference  a torchvision `Dataset` of PIL images with `RandomCrop(32, padding=4)`,
             `RandomHorizontalFlip()`, `ToTensor()`, `Normalize()` and a `DataLoader` with the
             best `num_workers` of those tried;
- bare       a plain loop over tensors augmented once in advance: the model's own cost, the
             ceiling for any loader.

Claim (2026-11-22, torch 2.14.1 CPU, 2-core x86_64, quiet machine; CIFAR-10 10k-image subset,
batch 128, default threads, `--rounds 5`):

    model     engine img/s  reference img/s (workers)  bare img/s  engine/ref  engine/bare  per CPU-s (ref / bare)
    LeNet-5       9267           2668 (0)                 9086       3.47x        1.02x        2.54x / 1.02x
    ResNet-20      425            345 (0)                  396       1.23x        1.07x        1.19x / 1.07x

With `--threads 1` the engine is held to one core while the reference's loader workers take the
other: LeNet-5 1.47x (2.77x per CPU-second), ResNet-20 1.13x. Images per CPU-second (process CPU
time, the loader's worker processes included) measure the work each loop does per image; wall-clock
on a shared machine is a lottery. With two intra-op threads on a busy box every loop can collapse
(OpenMP threads spin-wait on each other); `train.num_threads` pins it.

The machine may be shared and noisy: the methods are interleaved in rounds (order rotated each
round) and the ratios are of medians. Run:  python bench/train_speed.py --model lenet5 resnet20

On a GPU (the issue's GPU row; not yet measured, no GPU was lent so far):
    python bench/train_speed.py --device cuda --model resnet18 --steps 200 --images 50000
The three loops then do the same model math (channels_last, bf16 autocast; the engine's CUDA
defaults), the reference's DataLoader has 8 workers and pinned memory, and the table adds the mean
GPU utilisation of each loop (nvidia-smi sampled every 100 ms).
Data: CIFAR-10 from ../shared/datasets/cifar10-jpg.tar.gz when present (a subset is decoded),
scikit-learn's digits (upscaled to 32x32) otherwise. Writes bench/results/train_speed-<time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from tasks import augment as aug  # noqa: E402
from tasks import train as tr  # noqa: E402
from tasks.layout import Layout  # noqa: E402
from tasks.params import Params  # noqa: E402
from tasks.readers import write_prepared  # noqa: E402

CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
if not CIFAR.exists():
    CIFAR = Path("/work/shared/datasets/cifar10-jpg.tar.gz")


# --------------------------------------------------------------------------- data


class InMemory:
    """A dataset held in memory; `run_zooflow` writes it as a prepared dataset for the real stage."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: list[str], val: int = 256):
        self.splits = {"train": (x[val:], y[val:]), "val": (x[:val], y[:val]), "test": (x[:val], y[:val])}
        self.classes = classes
        self.meta = {"classes": classes, "num_classes": len(classes), "image_size": x.shape[1], "channels": x.shape[3]}

    def split(self, name):
        return self.splits[name]


def load_cifar(limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Decode `limit` train images of the shared CIFAR-10 JPEG tarball (a class-balanced subset)."""
    per_class = limit // 10
    images, labels, classes = [], [], []
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != "train":
                continue
            cls = parts[1]
            if counts.get(cls, 0) >= per_class:
                continue
            if cls not in classes:
                classes.append(cls)
            counts[cls] = counts.get(cls, 0) + 1
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(cls)
            if sum(counts.values()) >= per_class * 10:
                break
    classes = sorted(classes)
    y = np.array([classes.index(c) for c in labels], np.int64)
    x = np.stack(images)
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order], y[order], classes, f"CIFAR-10 train subset ({len(y)} images)"


def load_digits32() -> tuple[np.ndarray, np.ndarray, list[str], str]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16 * 255).astype(np.uint8)
    x = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in x])
    x = np.repeat(x[..., None], 3, axis=3)
    return x, d.target.astype(np.int64), [str(i) for i in range(10)], f"digits upscaled to 32x32 ({len(x)} images)"


# --------------------------------------------------------------------------- the three loops


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def fresh_model(name, num_classes, channels):
    torch.manual_seed(0)
    return models.build(name, num_classes=num_classes, in_channels=channels, image_size=32)


DEVICE = torch.device("cpu")


def on_device(model):
    """The reference and bare loops do the model math the engine does by default on the device:
    channels_last and, on CUDA, bf16 autocast. Only the data path differs between the three."""
    model = model.to(DEVICE)
    return model.to(memory_format=torch.channels_last) if DEVICE.type == "cuda" else model


def step(model, opt, x, y):
    if DEVICE.type == "cuda":
        x = x.to(DEVICE, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(DEVICE, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
        out = model(x)
    if isinstance(out, tuple):
        out = out[0]
    loss = nn.functional.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


class GpuUtilization:
    """Mean GPU utilisation (%) while the block runs, sampled by `nvidia-smi` every 100 ms; None on CPU
    or without nvidia-smi."""

    def __enter__(self):
        self.proc, self.value = None, None
        if DEVICE.type == "cuda":
            import shutil
            import subprocess

            if shutil.which("nvidia-smi"):
                index = DEVICE.index if DEVICE.index is not None else torch.cuda.current_device()
                self.proc = subprocess.Popen(
                    ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                )
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate()
            samples = [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]
            self.value = statistics.mean(samples) if samples else None


def run_zooflow(data: InMemory, arch: str, batch: int, steps: int, workdir: Path, compile: bool = False) -> float:
    """The real train stage with its defaults (deterministic included): two epochs of `steps` steps;
    the second epoch's reported img/s."""
    params = Params.model_validate(
        {
            "device": DEVICE.type,
            "augment": {"crop_padding": 4, "hflip": True},
            "train": {
                "architectures": [arch],
                "epochs": 2,
                "batch_size": batch,
                "max_steps_per_epoch": steps,
                "resume": False,
                "progress": "off",
                "compile": compile,
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
                "schedule": {"name": "constant"},
            },
        }
    )
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, GpuUtilization() as util:
        layout = Layout(Path(tmp))
        write_prepared(layout.prepared, data.splits, data.classes)
        tr.train(params, layout, arch)
        history = json.loads((Path(tmp) / "outputs/train" / arch / "history.json").read_text())
    torch.use_deterministic_algorithms(False)  # process-global: leave the other loops as they were
    last = history[-1]
    return last["img_per_s"], steps * batch / last["cpu_seconds"], util.value


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images: list[Image.Image], labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def reference_loader(data: InMemory, batch: int, workers: int, stats: aug.Stats):
    from torchvision import transforms

    x, y = data.split("train")
    pil = [Image.fromarray(im) for im in x]
    t = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(stats.mean, stats.std),
        ]
    )
    return torch.utils.data.DataLoader(
        PILDataset(pil, y, t), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=DEVICE.type == "cuda",
    )


def run_reference(loader, arch, num_classes, channels, steps: int, warmup: int = 3) -> float:
    model = on_device(fresh_model(arch, num_classes, channels)).train()
    opt = sgd(model)
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    for _ in range(warmup):
        step(model, opt, *next_batch())
    sync()
    workers = [w.pid for w in getattr(it, "_workers", [])]
    with GpuUtilization() as util:
        t0, cpu0 = time.perf_counter(), time.process_time() + _cpu(workers)
        for _ in range(steps):
            step(model, opt, *next_batch())
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() + _cpu(workers) - cpu0
    n = steps * loader.batch_size
    return n / wall, n / cpu, util.value


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the loader's worker processes (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_bare(pre: tuple[torch.Tensor, torch.Tensor], arch, num_classes, channels, batch: int, steps: int, warmup: int = 3) -> float:
    x, y = (t.to(DEVICE) for t in pre)  # already augmented, already on the device
    if DEVICE.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    model = on_device(fresh_model(arch, num_classes, channels)).train()
    opt = sgd(model)
    nb = len(y) // batch
    for i in range(warmup):
        step(model, opt, x[(i % nb) * batch : (i % nb + 1) * batch], y[(i % nb) * batch : (i % nb + 1) * batch])
    sync()
    with GpuUtilization() as util:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            j = i % nb
            step(model, opt, x[j * batch : (j + 1) * batch], y[j * batch : (j + 1) * batch])
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return steps * batch / wall, steps * batch / cpu, util.value


def pre_augmented(data: InMemory, stats: aug.Stats, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.split("train")
    a = aug.BatchAugmenter(Params().augment, stats, num_classes)
    xb, _ = a(aug.to_nchw(x), torch.as_tensor(y), torch.Generator().manual_seed(0))
    return xb.contiguous(), torch.as_tensor(y)


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=["lenet5", "resnet20"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="timed steps per model (default: lenet5 60, others 12)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=10000, help="CIFAR-10 images to decode")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N]: all three loops train there")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="reference num_workers to try (default: 0..min(cores, 4) on CPU, 8 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="also time the engine with train.compile: true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads for all three (0: torch's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    if CIFAR.exists():
        x, y, classes, source = load_cifar(args.images)
    else:
        x, y, classes, source = load_digits32()
    data = InMemory(x, y, classes)
    stats = aug.compute_stats(data.split("train")[0])
    num_classes, channels = len(classes), x.shape[3]
    cores = os.cpu_count() or 1
    default_workers = [8] if DEVICE.type == "cuda" else list(range(0, min(cores, 4) + 1))
    worker_choices = args.workers if args.workers is not None else default_workers
    pre = pre_augmented(data, stats, num_classes)
    args.out.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else platform.processor() or platform.machine()
    print(f"data: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads, {cores} cores, {where}")

    results = []
    for mi, arch in enumerate(args.model):
        steps = (args.steps[mi] if args.steps and mi < len(args.steps) else None) or (60 if arch == "lenet5" else 12)
        # Choose the reference's best num_workers once, on a short run.
        probe = {}
        for w in worker_choices:
            loader = reference_loader(data, args.batch, w, stats)
            probe[w] = run_reference(loader, arch, num_classes, channels, max(4, steps // 3), warmup=2)[0]
            del loader
        best_w = max(probe, key=probe.get)
        loader = reference_loader(data, args.batch, best_w, stats)
        print(f"{arch}: reference num_workers probe (img/s): " + ", ".join(f"{w}: {v:.0f}" for w, v in probe.items()) + f" -> {best_w}", flush=True)
        order = ["zooflow", "reference", "bare"] + (["zooflow_compile"] if args.compile else [])
        runs: dict[str, list] = {name: [] for name in order}
        if args.compile:  # compile once outside the timing (inductor caches the kernels on disk)
            run_zooflow(data, arch, args.batch, 2, args.out, compile=True)
        for r in range(args.rounds):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                if name == "zooflow":
                    v = run_zooflow(data, arch, args.batch, steps, args.out)
                elif name == "zooflow_compile":
                    v = run_zooflow(data, arch, args.batch, steps, args.out, compile=True)
                elif name == "reference":
                    v = run_reference(loader, arch, num_classes, channels, steps)
                else:
                    v = run_bare(pre, arch, num_classes, channels, args.batch, steps)
                runs[name].append(v)
            print(f"  round {r + 1} img/s (img per CPU-s): " + ", ".join(f"{k} {v[-1][0]:.0f} ({v[-1][1]:.0f})" for k, v in runs.items()), flush=True)
        del loader
        wall = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
        cpu = {k: statistics.median(x[1] for x in v) for k, v in runs.items()}
        ratios = {f"{a}_vs_{b}": wall[a] / wall[b] for a in order if a.startswith("zooflow") for b in ("reference", "bare")}
        per_round = {
            f"{a}_vs_{b}": statistics.median(x[0] / y[0] for x, y in zip(runs[a], runs[b]))
            for a in order if a.startswith("zooflow") for b in ("reference", "bare")
        }
        cpu_ratios = {f"{a}_vs_{b}": cpu[a] / cpu[b] for a in order if a.startswith("zooflow") for b in ("reference", "bare")}
        util = {k: (statistics.median(u) if (u := [x[2] for x in v if x[2] is not None]) else None) for k, v in runs.items()}
        results.append(
            {
                "model": arch,
                "batch": args.batch,
                "steps": steps,
                "rounds": args.rounds,
                "reference_workers": best_w,
                "reference_probe": probe,
                "img_per_s": wall,
                "img_per_cpu_s": cpu,
                "ratios": ratios,
                "median_round_ratios": per_round,
                "cpu_ratios": cpu_ratios,
                "gpu_utilization_percent": util,
                "runs": {k: [list(x) for x in v] for k, v in runs.items()},
            }
        )

    print()
    print("| model | engine | steps x rounds | engine img/s | reference img/s (workers) | bare img/s | engine / reference | engine / bare | same, per CPU-second |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        m, c = r["img_per_s"], r["img_per_cpu_s"]
        for name in m:
            if not name.startswith("zooflow"):
                continue
            print(
                f"| {r['model']} | {name.replace('_', ' + ')} | {r['steps']} x {r['rounds']} | {m[name]:.0f} | {m['reference']:.0f} ({r['reference_workers']}) "
                f"| {m['bare']:.0f} | {r['ratios'][name + '_vs_reference']:.2f}x | {r['ratios'][name + '_vs_bare']:.2f}x "
                f"| {r['cpu_ratios'][name + '_vs_reference']:.2f}x / {r['cpu_ratios'][name + '_vs_bare']:.2f}x |"
            )
            u = r["gpu_utilization_percent"]
            if u.get(name) is not None:
                print(f"|   GPU utilisation % | engine {u[name]:.0f} | | | reference {u['reference'] or 0:.0f} | bare {u['bare'] or 0:.0f} | | | |")
    report = {
        "data": source,
        "device": str(DEVICE),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": cores,
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    path = args.out / f"train_speed-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return report


if __name__ == "__main__":
    main()
