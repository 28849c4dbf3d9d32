"""GPU check (issue 17): every CUDA path of zooflow in one command, sized for a 15-minute GPU lease.

One process, sections in this order, each capped in seconds (BUDGET below; the whole at most ~8 min on
one H200) so that one failing or slow section is a row of the table and the others still run:

    data        CIFAR-10 (60,000 JPEGs, --data) through the project's own ingest (data.source=archive,
                decoded on every core); airbench's train.pt/test.pt built from the same decoded pixels
    zoo         one variant of every family (the one params.yaml trains, else the family's first) at its
                paper size (CIFAR variants 32x32 batch 128; ImageNet ones 224x224 batch 32), 2 epochs of
                15 steps through the real train stage (bf16 autocast, channels_last, fused AdamW): loss
                finite and falling, peak GPU memory; kNN fitted on the GPU (the fused SGD path: below)
    throughput  bench/train_speed.py's three loops in one process: the engine vs DataLoader + PIL (8
                workers, pinned memory) vs a bare loop; ResNet-18 (CIFAR stem); img/s, GPU utilisation
    time-to-94  Page's ResNet-9 with its recipe (bench/recipes/resnet9_94.yaml) on the full 50k/10k split
    airbench94  Keller Jordan's airbench94 (a carried copy, --airbench; never part of the project) on the
                same pixels, same GPU, same call: warm-up + 3 runs
    paper       ResNet-20 / ResNet-56 with He et al.'s recipe compressed to 30 epochs
                (bench/recipes/resnet_cifar_paper.yaml): test accuracy beside the paper's 91.25 / 93.03 %
    ddp         one torchrun --nproc-per-node 1 (a process group of one: NCCL on CUDA, gloo on CPU): a run
                stopped after its first checkpoint, its resume, and an uninterrupted run to compare weights
    compile     ResNet-9 and ResNet-20 with train.compile: true (compile time, img/s beside eager's)

It prints one table and writes `gpu_check.json` (a row per family / item, and the environment) to --out,
after every row, so a run cut short still leaves what it measured.

    python bench/gpu_check.py --out DIR [--data .gpu/cifar10-jpg.tar.gz] [--airbench .gpu/airbench]
    python bench/gpu_check.py --dry-run --out DIR     # CPU, tiny generated data, a couple of steps each

--dry-run exercises every section's code on the CPU in about a minute (CI runs it: tests/test_gpu_check.py):
airbench94 is skipped there (CUDA-only) and compile runs eager (inductor on two CPU cores is too slow).

NOT YET RUN ON A GPU. The next session with one prepares the carried files here (no device time):

    make gpu-wheels gpu-data        # .whl/ (pydantic for cp312), .gpu/ (the CIFAR-10 tarball, airbench)

then makes ONE device call, carry [".whl", ".gpu"], timeout_s 560:

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; nvidia-smi; PYTHONUNBUFFERED=1
    python3 bench/gpu_check.py --data .gpu/cifar10-jpg.tar.gz --airbench .gpu/airbench --out $OUT
    2>&1 | tee $OUT/gpu_check.log

(one line). `--sections zoo,compile` reruns only what failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import json
import math
import os
import platform
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from tasks import augment as aug  # noqa: E402
from tasks import distributed  # noqa: E402
from tasks import train as train_stage  # noqa: E402
from tasks.engine import TrainingDiverged  # noqa: E402
from tasks.files import atomic_path  # noqa: E402
from tasks.layout import Layout  # noqa: E402
from tasks.params import Params, load_params  # noqa: E402
from tasks.readers import load_prepared, write_prepared  # noqa: E402

RECIPES = HERE / "recipes"
SECTIONS = ("data", "zoo", "throughput", "time-to-94", "airbench94", "paper", "ddp", "compile")

# Seconds each section may take on an H200; all of them stop at --budget (450 s: with start-up, under 8
# minutes), so compile, last and the least needed, gets what is left. Expected: ~60 % of each cap.
BUDGET = {"data": 40, "zoo": 110, "throughput": 40, "time-to-94": 50, "airbench94": 35, "paper": 80, "ddp": 45,
          "compile": 90}
DRY_BUDGET = {name: 120 for name in SECTIONS}

# The zoo section's image size: 32 for a CIFAR-scale variant, 224 for an ImageNet or any-scale one, except
# these families (the cs231n baselines are CIFAR-10 classifiers).
PAPER_SIZE = {"baselines": 32}
ZOO_OPTIMIZER = {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01}
ZOO_SCHEDULE = {"name": "constant", "warmup_epochs": 1}  # epoch 1 warms up from 3e-5: no early spike (AlexNet)
PAPER_ACCURACY = {"resnet20": 0.9125, "resnet56": 0.9303}  # He et al. 2015, Table 6 (test error 8.75 / 6.97 %)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# What each section does, on the GPU and in the dry run (CPU, tiny data).
SETTINGS = {
    "gpu": {
        "zoo": {"epochs": 2, "steps": 15, "batch": {32: 128, 224: 32}, "val": 256, "size": None, "small_options": False},
        "throughput": {"model": "resnet18", "images": 25_000, "batch": 512, "steps": 100, "rounds": 2, "workers": 8},
        "recipe_overrides": [],
        "airbench_runs": 3,
        "ddp": {"arch": "resnet20", "images": 1024, "batch": 128, "epochs": 3},
        "compile": {"archs": ["resnet9", "resnet20"], "compile": True},
    },
    "dry": {
        "zoo": {"epochs": 2, "steps": 2, "batch": {32: 8}, "val": 16, "size": 32, "small_options": True},
        "throughput": {"model": "resnet20", "images": 96, "batch": 8, "steps": 2, "rounds": 1, "workers": 2},
        "recipe_overrides": ["train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=2"],
        "airbench_runs": 1,
        "ddp": {"arch": "resnet20", "images": 48, "batch": 8, "epochs": 3},
        "compile": {"archs": ["resnet9", "resnet20"], "compile": False},
    },
}


# --------------------------------------------------------------------------- report and time boxes


class OutOfTime(BaseException):
    """A section ran past its cap (a BaseException: an item's `except Exception` must not swallow it)."""


@contextlib.contextmanager
def timebox(seconds: float):
    def alarm(signum, frame):
        raise OutOfTime(f"past its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """The table's rows, saved as JSON after every row."""

    def __init__(self, out: Path, env: dict):
        self.path = out / "gpu_check.json"
        self.env = env
        self.rows: list[dict] = []

    def add(self, section: str, item: str, status: str, result: str = "", seconds: float | None = None, **numbers) -> dict:
        row = {"section": section, "item": item, "status": status, "result": result,
               "seconds": None if seconds is None else round(seconds, 2), **_plain(numbers)}
        self.rows.append(row)
        self.save()
        print(f"[gpu_check] {section} | {item} | {status} | {result}", flush=True)
        return row

    def save(self) -> None:
        self.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"env": self.env, "rows": self.rows}, indent=2) + "\n")

    def table(self) -> str:
        head = ("section", "item", "status", "result", "s")
        cells = [[r["section"], r["item"], r["status"], r["result"], "" if r["seconds"] is None else f"{r['seconds']:.1f}"]
                 for r in self.rows]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in cells]
        return "\n".join(lines)


def _plain(value):
    """JSON-ready: numpy and torch scalars to Python, NaN/inf to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:160] if text else ''}"


class Check:
    """What the sections share: device, folders, settings, the decoded CIFAR-10, the report."""

    def __init__(self, args, report: Report):
        self.args = args
        self.dry = args.dry_run
        self.s = SETTINGS["dry" if self.dry else "gpu"]
        self.device = torch.device("cpu" if self.dry else args.device)
        self.work = Path(args.work)
        self.report = report
        self.budget = DRY_BUDGET if self.dry else BUDGET
        self.deadline = time.monotonic() + args.budget
        self.current = "-"
        self.cifar: dict | None = None  # {"train": (x, y), "test": (x, y), "classes": [...]}, uint8 NHWC
        self.full: Layout | None = None  # the 50k/10k prepared split (time to 94, paper)
        self.zoo_img_per_s: dict[str, float] = {}
        self.t94: dict | None = None  # zooflow's time-to-94 result, beside airbench's

    def item(self, section: str, name: str, fn) -> dict | None:
        """Run one item: its row, or a `fail` row naming the error; a timeout stops the section."""
        self.current = name
        started = time.monotonic()
        peak = PeakMemory(self.device)
        try:
            with peak:
                status, result, numbers = fn()
        except TrainingDiverged as exc:
            return self.report.add(section, name, "diverged", short(exc), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - one item's failure is a row; the check goes on
            traceback.print_exc()
            return self.report.add(section, name, "fail", short(exc), time.monotonic() - started)
        finally:
            _release(self.device)
        if peak.gib is not None:
            numbers.setdefault("peak_gpu_gib", round(peak.gib, 2))
        return self.report.add(section, name, status, result, time.monotonic() - started, **numbers)


class PeakMemory:
    """Peak GPU memory allocated by tensors inside the block (None on CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.gib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2**30


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_section(check: Check, name: str, fn) -> None:
    if name not in check.args.sections:
        return
    cap = min(check.budget[name], check.deadline - time.monotonic())
    if cap < 1:
        check.report.add(name, "-", "skipped", "no time left in the check's budget")
        return
    check.current = "-"
    started = time.monotonic()
    print(f"[gpu_check] section {name} (cap {cap:.0f} s)", flush=True)
    try:
        with timebox(cap):
            fn(check)
    except OutOfTime as exc:
        check.report.add(name, check.current, "timeout", f"section stopped: {exc}; later items not run",
                         time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - a broken section is a row, the next section still runs
        traceback.print_exc()
        check.report.add(name, check.current, "fail", short(exc), time.monotonic() - started)
    finally:
        _release(check.device)
        torch.use_deterministic_algorithms(False)  # process-global: each section sets its own


# --------------------------------------------------------------------------- data


def tiny_archive(path: Path, train_per_class: int = 24, test_per_class: int = 6) -> Path:
    """A CIFAR-10-shaped .tar.gz (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg, 32x32 JPEG) of generated
    images whose colour depends on the class: the dry run's stand-in for the real tarball."""
    from PIL import Image

    rng = np.random.default_rng(0)
    palette = rng.integers(30, 226, (len(CIFAR10_CLASSES), 3))
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CIFAR10_CLASSES):
                for i in range(per_class):
                    pixels = np.clip(palette[c] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def section_data(check: Check) -> None:
    from tasks.ingest import ingest

    def run():
        archive = Path(check.args.data) if check.args.data else None
        if check.dry:
            archive = tiny_archive(check.work / "tiny-cifar10.tar.gz")
        if archive is None or not archive.exists():
            raise FileNotFoundError(f"{archive}: the CIFAR-10 tarball (make gpu-data copies it to .gpu/)")
        params = load_params(Path("/nonexistent/params.yaml"), [
            "data.source=archive", f"data.path={archive.resolve()}", "data.image_size=32", "data.workers=0"],
            check_zoo=False)
        layout = Layout(check.work / "cifar")
        summary = ingest(params, layout)
        prepared = load_prepared(layout.prepared)
        (xt, yt), (xv, yv), (xs, ys) = (prepared.split(s) for s in ("train", "val", "test"))
        check.cifar = {"train": (np.concatenate([xt, xv]), np.concatenate([yt, yv])), "test": (np.asarray(xs), ys),
                       "classes": prepared.classes}
        if prepared.classes != CIFAR10_CLASSES:
            raise ValueError(f"class order {prepared.classes} is not torchvision's {CIFAR10_CLASSES}")
        n_train, n_test = len(check.cifar["train"][1]), len(ys)
        return "ok", (f"{archive.name}: {n_train:,} train + {n_test:,} test images decoded in "
                      f"{summary['seconds']:.1f} s on {os.cpu_count()} cores, {summary['bad_files']} bad"), \
            {"train_images": n_train, "test_images": n_test, "decode_seconds": summary["seconds"],
             "images_per_s": round((n_train + n_test) / max(summary["seconds"], 1e-9))}

    check.item("data", "ingest cifar10 (archive)", run)


def need_data(check: Check) -> dict:
    if check.cifar is None:
        raise RuntimeError("no CIFAR-10: the data section did not run or failed")
    return check.cifar


def full_split(check: Check) -> Layout:
    """The 50k/10k split as a prepared dataset: train = train + val, val = test = the test split. What is
    reported is the final epoch's accuracy on it, as airbench reports (no choosing on test)."""
    if check.full is None:
        data = need_data(check)
        layout = Layout(check.work / "full")
        write_prepared(layout.prepared, {"train": data["train"], "val": data["test"], "test": data["test"]},
                       data["classes"], source={"kind": "gpu_check", "split": "50k/10k"})
        check.full = layout
    return check.full


def resized(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images resized (bilinear) to size x size: CIFAR images at an ImageNet network's size."""
    if x.shape[1] == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------- zoo


def family_representatives(project: Params) -> list[tuple[str, str]]:
    """(family, architecture) for every family in the registry's order: the variant params.yaml trains
    (its one small variant per family), else the family's first registered variant trained by SGD."""
    infos = models.available()
    listed = [name for name in project.train.architectures if name in infos]
    chosen: dict[str, str] = {}
    for name in listed + list(infos):
        info = infos[name]
        if info.trained_by == "sgd" and info.family not in chosen:
            chosen[info.family] = name
    families = dict.fromkeys(info.family for info in infos.values())
    return [(family, chosen[family]) for family in families if family in chosen]


def zoo_layout(check: Check, size: int, batch: int, cache: dict) -> Layout:
    """A prepared subset of CIFAR-10 at `size` px: `steps` full batches of train, a small val."""
    if size not in cache:
        s = check.s["zoo"]
        data = need_data(check)
        n = batch * s["steps"]
        (x, y), (xv, yv) = data["train"], data["test"]
        layout = Layout(check.work / f"zoo{size}")
        write_prepared(layout.prepared, {"train": (resized(x[:n], size), y[:n]),
                                         "val": (resized(xv[:s["val"]], size), yv[:s["val"]]),
                                         "test": (resized(xv[:s["val"]], size), yv[:s["val"]])}, data["classes"])
        cache[size] = layout
    return cache[size]


def zoo_params(check: Check, project: Params, arch: str, batch: int, compile: bool = False) -> Params:
    """A few steps of `arch`: AdamW at 1e-3 (fused on CUDA), whose per-weight step size makes the loss fall
    within a few dozen steps in every family, with or without BatchNorm, at 32 or 224 px."""
    s = check.s["zoo"]
    train = {"architectures": [arch], "epochs": s["epochs"], "batch_size": batch, "max_steps_per_epoch": s["steps"],
             "optimizer": ZOO_OPTIMIZER, "schedule": ZOO_SCHEDULE,
             "deterministic": False, "cudnn_benchmark": False, "compile": compile, "resume": False, "progress": "off"}
    if s["small_options"]:  # the dry run: the project's small widths (what `zooflow run` trains on a CPU)
        options = project.train.model_options.get(arch)
        if options is None and "width" in inspect.signature(models.available()[arch].builder).parameters:
            options = {"width": 0.25}  # a family params.yaml does not train (ResNet-9)
        train["model_options"] = {arch: options or {}}
    return Params.model_validate({"device": check.device.type, "augment": {"crop_padding": 4, "hflip": True},
                                  "train": train})


def train_few_steps(check: Check, params: Params, layout: Layout, arch: str) -> tuple[str, str, dict]:
    summary = train_stage.train(params, layout, arch)
    history = json.loads((layout.train(arch) / "history.json").read_text())
    shutil.rmtree(layout.train(arch), ignore_errors=True)  # checkpoints of VGG at 224 are ~1.5 GB
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    finite = all(math.isfinite(h["train_loss"]) for h in history)
    falling = finite and last < first
    status = "ok" if finite and (falling or check.dry) else ("not falling" if finite else "non-finite")
    numbers = {"arch": arch, "loss_first_epoch": first, "loss_last_epoch": last, "finite": finite, "falling": falling,
               "img_per_s": history[-1]["img_per_s"], "epoch_seconds": [h["seconds"] for h in history],
               "params": summary["params"], "steps": len(history) * params.train.max_steps_per_epoch}
    return status, f"loss {first:.3f} -> {last:.3f}, {history[-1]['img_per_s']:,.0f} img/s", numbers


def section_zoo(check: Check) -> None:
    s = check.s["zoo"]
    project = load_params(ROOT / "params.yaml")
    layouts: dict[int, Layout] = {}
    for family, arch in family_representatives(project):
        info = models.available()[arch]
        size = s["size"] or PAPER_SIZE.get(family) or (32 if info.scale == "small" else 224)
        batch = s["batch"][size]

        def run(arch=arch, size=size, batch=batch):
            params = zoo_params(check, project, arch, batch)
            status, result, numbers = train_few_steps(check, params, zoo_layout(check, size, batch, layouts), arch)
            check.zoo_img_per_s[arch] = numbers["img_per_s"]
            return status, f"{arch} {size}px b{batch}: {result}", {**numbers, "family": family, "image_size": size,
                                                                   "batch": batch}

        check.item("zoo", family, run)

    fitted = next((n for n in project.train.architectures if models.available()[n].trained_by == "fit"), None)
    if fitted:
        def fit():
            layout = zoo_layout(check, 32, s["batch"][32], layouts)
            params = zoo_params(check, project, fitted, s["batch"][32])
            summary = train_stage.train(params, layout, fitted)
            return "ok", f"{fitted} fitted on {check.device.type}: val acc {summary['best_val_acc']:.3f}", \
                {"arch": fitted, "val_acc": summary["best_val_acc"]}

        check.item("zoo", f"{models.available()[fitted].family} (fitted)", fit)


def section_compile(check: Check) -> None:
    s = check.s["compile"]
    project = load_params(ROOT / "params.yaml")
    layouts: dict[int, Layout] = {}
    batch = check.s["zoo"]["batch"][32]
    for arch in s["archs"]:
        def run(arch=arch):
            params = zoo_params(check, project, arch, batch, compile=s["compile"])
            status, result, numbers = train_few_steps(check, params, zoo_layout(check, 32, batch, layouts), arch)
            eager = check.zoo_img_per_s.get(arch)
            first, steady = numbers["epoch_seconds"][0], numbers["img_per_s"]
            how = "compiled: first epoch (compiling)" if s["compile"] else \
                "dry run, eager (inductor on a 2-core CPU is too slow): first epoch"
            vs = f", eager {eager:,.0f} ({steady / eager:.2f}x)" if eager else ""
            return status, f"{how} {first:.1f} s, then {steady:,.0f} img/s{vs}", \
                {**numbers, "compiled": s["compile"], "eager_img_per_s": eager}

        check.item("compile", arch, run)


# --------------------------------------------------------------------------- throughput


def section_throughput(check: Check) -> None:
    import statistics

    from bench import train_speed as ts  # its three loops, not copies of them

    s = check.s["throughput"]
    ts.DEVICE = check.device
    data = need_data(check)
    x, y = (a[: s["images"]] for a in data["train"])
    mem = ts.InMemory(x, y, data["classes"], val=min(256, len(y) // 4))
    stats = aug.compute_stats(mem.split("train")[0])
    pre = ts.pre_augmented(mem, stats, len(data["classes"]))
    loader = ts.reference_loader(mem, s["batch"], s["workers"], stats)
    runs: dict[str, list] = {"engine": [], "dataloader": [], "bare": []}
    labels = {"engine": "engine (tasks.train, data on device)",
              "dataloader": f"DataLoader + PIL ({s['workers']} workers, pinned)", "bare": "bare loop (pre-augmented)"}
    loops = {"engine": lambda: ts.run_zooflow(mem, s["model"], s["batch"], s["steps"], check.work),
             "dataloader": lambda: ts.run_reference(loader, s["model"], len(data["classes"]), x.shape[3], s["steps"]),
             "bare": lambda: ts.run_bare(pre, s["model"], len(data["classes"]), x.shape[3], s["batch"], s["steps"])}
    seconds = dict.fromkeys(loops, 0.0)
    for _ in range(s["rounds"]):
        for name, loop in loops.items():
            check.current = labels[name]
            started = time.monotonic()
            runs[name].append(loop())
            seconds[name] += time.monotonic() - started
    del loader, loops
    median = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    for name, values in runs.items():
        util = [r[2] for r in values if r[2] is not None]
        numbers = {"model": s["model"], "batch": s["batch"], "steps": s["steps"], "rounds": s["rounds"],
                   "img_per_s": median[name], "img_per_cpu_s": statistics.median(r[1] for r in values),
                   "gpu_utilization_percent": statistics.median(util) if util else None,
                   "runs": [list(r) for r in values]}
        ratio = "" if name == "engine" else f"; engine {median['engine'] / median[name]:.2f}x this"
        shown = f", GPU {numbers['gpu_utilization_percent']:.0f} %" if util else ""
        check.report.add("throughput", labels[name], "ok",
                         f"{s['model']} b{s['batch']}: {median[name]:,.0f} img/s{shown}{ratio}", seconds[name], **numbers)


# --------------------------------------------------------------------------- accuracy runs


def recipe(check: Check, name: str) -> Params:
    return load_params(RECIPES / name, [f"device={check.device.type}", "train.progress=log", "train.resume=false",
                                        *check.s["recipe_overrides"]])


def train_full(check: Check, params: Params, arch: str) -> dict:
    """`arch` on the 50k/10k split; the final epoch's test accuracy and the training time."""
    layout = full_split(check)
    started = time.perf_counter()
    train_stage.train(params, layout, arch)
    wall = time.perf_counter() - started
    history = json.loads((layout.train(arch) / "history.json").read_text())
    accs = [h["val_acc"] for h in history]
    return {"arch": arch, "epochs": len(history), "final_test_acc": accs[-1], "best_test_acc": max(accs),
            "train_seconds": sum(h["seconds"] for h in history), "wall_seconds": wall,
            "first_epoch_at_94": next((i + 1 for i, a in enumerate(accs) if a >= 0.94), None),
            "test_acc_per_epoch": accs, "img_per_s": history[-1]["img_per_s"]}


def section_time_to_94(check: Check) -> None:
    params = recipe(check, "resnet9_94.yaml")
    arch = params.train.architectures[0]

    def run():
        r = train_full(check, params, arch)
        reached = r["final_test_acc"] >= 0.94
        check.t94 = r
        status = "ok" if reached or check.dry else "below 94 %"
        return status, (f"{arch}, {r['epochs']} epochs b{params.train.batch_size}: {100 * r['final_test_acc']:.2f} % "
                        f"test in {r['train_seconds']:.1f} s of training ({r['wall_seconds']:.1f} s wall)"), \
            {**r, "reached_94": reached, "recipe": "bench/recipes/resnet9_94.yaml"}

    check.item("time-to-94", f"zooflow {arch}", run)


def section_airbench(check: Check) -> None:
    if check.device.type != "cuda":
        check.report.add("airbench94", "airbench94", "skipped", f"CUDA-only (.cuda(), fp16, CUDA events): not on {check.device.type}")
        return
    folder = Path(check.args.airbench) if check.args.airbench else None
    if folder is None or not (folder / "airbench94.py").exists():
        check.report.add("airbench94", "airbench94", "skipped", f"no airbench94.py in {folder} (make gpu-data copies it)")
        return

    def run():
        import importlib.util

        data = need_data(check)
        home = check.work / "airbench"
        (home / "cifar10").mkdir(parents=True, exist_ok=True)
        for name, (x, y) in (("train.pt", data["train"]), ("test.pt", data["test"])):
            torch.save({"images": torch.from_numpy(np.ascontiguousarray(x)), "labels": torch.from_numpy(y).long(),
                        "classes": list(data["classes"])}, home / "cifar10" / name)
        spec = importlib.util.spec_from_file_location("airbench94", folder / "airbench94.py")
        airbench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(airbench)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False  # as airbench sets them
        runs = []
        cwd = os.getcwd()
        os.chdir(home)  # its loaders read ./cifar10/{train,test}.pt
        try:
            for run_id in ["warmup", *range(check.s["airbench_runs"])]:
                check.current = f"airbench94 run {run_id}"
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    tta = airbench.main(run_id)
                final = parse_airbench(buf.getvalue())
                final["tta_acc_returned"] = float(tta)
                if run_id != "warmup":
                    runs.append(final)
        finally:
            os.chdir(cwd)
        seconds = float(np.mean([r["total_time_seconds"] for r in runs]))
        tta_acc = float(np.mean([r["tta_val_acc"] for r in runs]))
        plain = float(np.mean([r["val_acc"] for r in runs]))
        ours = check.t94
        vs = f"; zooflow's time {ours['train_seconds'] / seconds:.1f}x this" if ours else ""
        return "ok", (f"{100 * tta_acc:.2f} % (TTA; {100 * plain:.2f} % without) in {seconds:.2f} s, mean of "
                      f"{len(runs)} runs after a warm-up{vs}"), \
            {"runs": runs, "mean_seconds": seconds, "mean_tta_acc": tta_acc, "mean_acc": plain,
             "zooflow_over_airbench_time": ours["train_seconds"] / seconds if ours else None}

    check.item("airbench94", "airbench94", run)


def parse_airbench(text: str) -> dict:
    """airbench94's final table row (`| run | eval | train_loss | train_acc | val_acc | tta_val_acc | total |`)."""
    for line in reversed(text.splitlines()):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1] == "eval":
            return {"val_acc": float(cells[4]), "tta_val_acc": float(cells[5]), "total_time_seconds": float(cells[6])}
    raise ValueError("airbench94 printed no final 'eval' row:\n" + text[-1000:])


def section_paper(check: Check) -> None:
    params = recipe(check, "resnet_cifar_paper.yaml")
    for arch in params.train.architectures:
        def run(arch=arch):
            r = train_full(check, params, arch)
            paper = PAPER_ACCURACY.get(arch)
            beside = f" (paper {100 * paper:.2f} % after ~164 epochs)" if paper else ""
            return "ok", (f"{r['epochs']} epochs b{params.train.batch_size}: {100 * r['final_test_acc']:.2f} % test"
                          f"{beside} in {r['train_seconds']:.1f} s"), {**r, "paper_acc": paper,
                                                                      "recipe": "bench/recipes/resnet_cifar_paper.yaml"}

        check.item("paper", arch, run)


# --------------------------------------------------------------------------- DDP


def section_ddp(check: Check) -> None:
    """One torchrun launch, one process (a process group of one: DDP over NCCL on CUDA, gloo on CPU), three
    trainings through the real stage: stopped right after its first checkpoint; the same again, which
    resumes from that checkpoint and finishes; and an uninterrupted one to compare the weights with."""
    s = check.s["ddp"]
    data = need_data(check)
    n = s["images"]
    splits = {"train": (data["train"][0][:n], data["train"][1][:n]),
              "val": (data["test"][0][:256], data["test"][1][:256]), "test": (data["test"][0][:256], data["test"][1][:256])}
    params = Params.model_validate({"device": check.device.type, "augment": {"crop_padding": 4, "hflip": True},
                                    "train": {"architectures": [s["arch"]], "epochs": s["epochs"], "batch_size": s["batch"],
                                              "deterministic": True, "resume": True, "progress": "log",
                                              "optimizer": {"lr": 0.05}}}).model_dump(mode="json", by_alias=True)
    folder = check.work / "ddp"
    for name in ("resumed", "whole"):
        write_prepared(folder / name / "data" / "prepared", splits, data["classes"])
    phases = [("interrupted", "resumed", 1), ("resumed", "resumed", None), ("whole", "whole", None)]
    config = {"params": params, "arch": s["arch"], "result": str(folder / "result.json"),
              "phases": [{"name": p, "layout": str(folder / f), "stop_after_epochs": stop} for p, f, stop in phases]}
    (folder / "config.json").write_text(json.dumps(config))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def run():
        code = distributed.launch(1, ["bench.gpu_check", "--ddp-worker", str(folder / "config.json")])  # torchrun
        if code:
            raise RuntimeError(f"torchrun exited with {code}")
        result = json.loads(Path(config["result"]).read_text())
        ckpt = {f: torch.load(folder / f / "outputs" / "train" / s["arch"] / "checkpoint.pt", weights_only=True)
                for f in ("resumed", "whole")}
        diff = max(float((ckpt["resumed"]["model"][k].float() - ckpt["whole"]["model"][k].float()).abs().max())
                   for k in ckpt["whole"]["model"])
        cut, resumed, whole = (result["phases"][p] for p in ("interrupted", "resumed", "whole"))
        ok = (result["active"] and result["world_size"] == 1 and cut.get("interrupted_after_epoch") == 1
              and resumed["resumed_from_epoch"] == 1 and resumed["epochs_run"] == s["epochs"])
        return ("ok" if ok else "fail"), (
            f"{result['backend']}, world {result['world_size']}: stopped after epoch 1, resumed to "
            f"{resumed['epochs_run']}; weights vs an uninterrupted run: max abs diff {diff:.3g}"), \
            {"backend": result["backend"], "world_size": result["world_size"],
             "resumed_from_epoch": resumed["resumed_from_epoch"], "epochs_run": resumed["epochs_run"],
             "max_abs_weight_diff": diff, "val_acc_resumed": resumed["best_val_acc"],
             "val_acc_uninterrupted": whole["best_val_acc"]}

    check.item("ddp", f"torchrun --nproc-per-node 1, {s['arch']}", run)


class _Stop(Exception):
    """The interrupted DDP run stops here, after its checkpoint was written."""


def ddp_worker(config_path: str) -> int:
    """A torchrun rank: the DDP section's trainings, one after the other, through the real stage."""
    import torch.distributed as dist

    config = json.loads(Path(config_path).read_text())
    params = Params.model_validate(config["params"])
    result: dict = {"phases": {}}
    for phase in config["phases"]:
        stop = phase["stop_after_epochs"]

        def log(metrics: dict, epoch: int, stop=stop) -> None:  # called after the epoch's checkpoint
            if stop and epoch + 1 >= stop:
                raise _Stop

        try:
            result["phases"][phase["name"]] = train_stage.train(params, Layout(Path(phase["layout"])), config["arch"],
                                                                log=log)
        except _Stop:
            result["phases"][phase["name"]] = {"interrupted_after_epoch": stop}
    result.update(active=distributed.active(), world_size=distributed.world_size(),
                  backend=dist.get_backend() if dist.is_initialized() else None)
    if distributed.is_main():
        Path(config["result"]).write_text(json.dumps(_plain(result)))
    distributed.shutdown()
    return 0


# --------------------------------------------------------------------------- main


def environment(check: Check) -> dict:
    env = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": check.dry,
           "device": str(check.device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu_cores": os.cpu_count(), "machine": platform.machine(), "budget_s": check.args.budget,
           "section_caps_s": check.budget}
    for name, path in (("shm", "/dev/shm"), ("tmp", tempfile.gettempdir()), ("work", check.work)):
        with contextlib.suppress(OSError):  # DataLoader workers pass batches through /dev/shm
            usage = shutil.disk_usage(path)
            env[f"{name}_free_gib"] = round(usage.free / 2**30, 1)
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), multiprocessors=props.multi_processor_count)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=False, help="folder for gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny generated data, a couple of steps per item")
    ap.add_argument("--data", default=str(ROOT / ".gpu" / "cifar10-jpg.tar.gz"), help="the CIFAR-10 JPEG tarball")
    ap.add_argument("--airbench", default=str(ROOT / ".gpu" / "airbench"), help="folder holding airbench94.py")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 450; dry run 600)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args.ddp_worker)
    if not args.out:
        ap.error("--out DIR is required")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    if args.budget is None:
        args.budget = 600.0 if args.dry_run else 450.0
    if not args.dry_run and args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.work is None:
        shm = Path("/dev/shm")
        base = shm if not args.dry_run and shm.is_dir() and os.access(shm, os.W_OK) else None
        if base is not None and shutil.disk_usage(base).free < 16 * 2**30:  # a container's small /dev/shm
            base = None
        scratch = tempfile.mkdtemp(prefix="zooflow-gpu-check-", dir=base)
        args.work = scratch
    Path(args.work).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = Report(out, {})
    check = Check(args, report)
    report.env = environment(check)
    try:
        for name, fn in (("data", section_data), ("zoo", section_zoo), ("throughput", section_throughput),
                         ("time-to-94", section_time_to_94), ("airbench94", section_airbench),
                         ("paper", section_paper), ("ddp", section_ddp), ("compile", section_compile)):
            run_section(check, name, fn)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    report.env["total_seconds"] = round(time.monotonic() - started, 1)
    report.save()
    where = report.env.get("gpu", report.env["device"])
    print(f"\nzooflow GPU check on {where}, torch {torch.__version__}, {report.env['started']}"
          f"{' (DRY RUN: CPU, tiny data)' if check.dry else ''}; {report.env['total_seconds']:.0f} s\n")
    print(report.table())
    print(f"\nwritten: {report.path}")
    bad = [r for r in report.rows if r["status"] in ("fail", "timeout", "diverged", "non-finite")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
