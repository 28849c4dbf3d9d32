"""Optimisers, schedules, EMA, early stopping, label smoothing and the MLflow wrapper."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import models
from tasks import augment as aug
from tasks import engine, optim
from tasks import train as tr
from tasks.files import read_json
from tasks.readers import build_model, load_stats
from tasks.params import OptimizerParams, ScheduleParams
from tests.test_train import data, make_params, register_test_models  # noqa: F401  (the `data` fixture)


class Linear(nn.Module):
    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(autouse=True)
def registered_test_models():
    """test_train's test models and this module's, for each test only (see test_train.registered_test_models)."""
    with models.temporary_registrations():
        register_test_models()
        models.register("Test", 2024, "a test", name="test_linear")(Linear)
        yield


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("impl", ["auto", "foreach", "for-loop"])
def test_each_optimizer_builds_and_steps(name, impl):
    model = small_model()
    opt = optim.build_optimizer(model, OptimizerParams(name=name, lr=0.1, nesterov=True, implementation=impl), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(4, 3, 8, 8)).square().mean()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert type(opt).__name__.lower() == {"sgd": "sgd", "adagrad": "adagrad", "adadelta": "adadelta", "rmsprop": "rmsprop", "adam": "adam", "adamw": "adamw"}[name]


def test_nesterov_and_fused_when_offered():
    model = small_model()
    opt = optim.build_optimizer(model, OptimizerParams(nesterov=True), torch.device("cpu"))
    assert opt.param_groups[0]["nesterov"] is True
    try:
        fused = optim.build_optimizer(model, OptimizerParams(name="adamw", implementation="fused"), torch.device("cpu"))
        assert fused.param_groups[0]["fused"] is True
    except RuntimeError:
        pytest.skip("this torch has no fused CPU AdamW")


def test_weight_decay_can_exclude_bn_and_bias():
    model = small_model()
    groups = optim.param_groups(model, 5e-4, exclude_bn_bias=True)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert len(optim.param_groups(model, 5e-4, exclude_bn_bias=False)) == 1


def lrs(schedule: ScheduleParams, epochs=10, steps=10, observe=None):
    s = optim.Schedule(schedule, epochs, steps)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    for g in opt.param_groups:
        g["base_lr"] = 1.0
    out = []
    for step in range(epochs * steps):
        out.append(s.set_lr(opt, step))
        if observe and step % steps == steps - 1:
            s.observe(observe[step // steps])
    return out


def test_schedules():
    cos = lrs(ScheduleParams(name="cosine"))
    assert cos[0] == 1.0 and cos[-1] < 0.01 and all(a >= b for a, b in zip(cos, cos[1:]))
    step = lrs(ScheduleParams(name="step", milestones=[3, 6]))
    assert step[29] == 1.0 and step[30] == pytest.approx(0.1) and step[60] == pytest.approx(0.01)
    default_steps = lrs(ScheduleParams(name="step"))  # 50 % and 75 %: epochs 5 and 7
    assert default_steps[49] == 1.0 and default_steps[50] == pytest.approx(0.1) and default_steps[70] == pytest.approx(0.01)
    exp = lrs(ScheduleParams(name="exponential", exp_gamma=0.96, exp_every=8), epochs=20, steps=1)
    assert exp[7] == 1.0 and exp[8] == pytest.approx(0.96) and exp[16] == pytest.approx(0.96**2)
    one = lrs(ScheduleParams(name="onecycle", onecycle_pct_start=0.3))
    peak = max(range(len(one)), key=one.__getitem__)
    assert one[0] == pytest.approx(1 / 25) and one[peak] == pytest.approx(1.0) and 25 <= peak <= 35 and one[-1] < 1e-3
    warm = lrs(ScheduleParams(name="constant", warmup_epochs=2, warmup_start_factor=0.1))
    assert warm[0] == pytest.approx(0.1) and warm[10] == pytest.approx(0.55) and warm[20:] == [1.0] * 80
    warm_cos = lrs(ScheduleParams(name="cosine", warmup_epochs=1))
    assert warm_cos[5] < warm_cos[10] == 1.0 and warm_cos[-1] < 0.01
    plateau = lrs(ScheduleParams(name="plateau", plateau_patience=1), observe=[0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    assert plateau[:40] == [1.0] * 40 and plateau[40] == pytest.approx(0.1) and plateau[60] == pytest.approx(0.01)


def test_schedule_state_round_trips():
    s = optim.Schedule(ScheduleParams(name="plateau", plateau_patience=0), 5, 2)
    s.observe(0.5)
    s.observe(0.4)
    t = optim.Schedule(ScheduleParams(name="plateau", plateau_patience=0), 5, 2)
    t.load_state_dict(s.state_dict())
    assert t.factor(3) == s.factor(3) == pytest.approx(0.1)


# the state each optimiser keeps per parameter: proof that it, and no other, took the steps
OPTIMIZER_STATE = {"sgd": "momentum_buffer", "adagrad": "sum", "adadelta": "acc_delta", "rmsprop": "square_avg",
                   "adam": "exp_avg_sq", "adamw": "exp_avg_sq"}


def expected_lrs(params, history, steps: int) -> list[float]:
    """The lr the schedule sets at the last step of each epoch, replayed from params (and val acc for plateau)."""
    tp = params.train
    schedule = optim.Schedule(tp.schedule, tp.epochs, steps)
    out = []
    for row in history:
        out.append(tp.optimizer.lr * schedule.factor((row["epoch"] + 1) * steps - 1))
        schedule.observe(row["val_acc"])
    return out


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"])
def test_every_optimizer_trains_from_params(tmp_path, data, name):  # noqa: F811
    lr = {"adadelta": 1.0, "sgd": 0.05}.get(name, 0.01)
    params = make_params(epochs=2, optimizer={"name": name, "lr": lr, "weight_decay": 1e-4})
    layout = data.layout(tmp_path)
    summary = tr.train(params, layout, "test_tiny")
    ckpt = torch.load(layout.train("test_tiny") / "checkpoint.pt", weights_only=True)
    states = ckpt["optimizer"]["state"].values()
    assert states and all(OPTIMIZER_STATE[name] in st for st in states)
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    history = read_json(layout.train("test_tiny") / "history.json")
    assert [h["lr"] for h in history] == pytest.approx(expected_lrs(params, history, steps=6))
    assert summary["epochs_run"] == 2 and history[1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("name", ["constant", "cosine", "step", "exponential", "plateau", "onecycle"])
def test_every_schedule_sets_the_lr_it_says(tmp_path, data, name):  # noqa: F811
    params = make_params(epochs=4, schedule={"name": name, "warmup_epochs": 0.5, "exp_every": 1,
                                             "plateau_patience": 0, "milestones": [1, 3]})
    layout = data.layout(tmp_path)
    tr.train(params, layout, "test_tiny")
    history = read_json(layout.train("test_tiny") / "history.json")
    lrs = [h["lr"] for h in history]
    assert lrs == pytest.approx(expected_lrs(params, history, steps=6))
    assert len(set(lrs)) > 1 or name == "constant"  # the schedule moved the lr


def test_grad_clip_bounds_every_update(tmp_path, data):  # noqa: F811
    """Clipped to a tiny norm, plain SGD moves the weights by at most lr x clip per step."""
    def moved(clip: float) -> float:
        params = make_params(epochs=1, grad_clip=clip, optimizer={"lr": 0.05, "momentum": 0, "weight_decay": 0})
        layout = data.layout(tmp_path / str(clip))
        tr.train(params, layout, "test_tiny")
        engine.seed_everything(params.seed)
        start = build_model("test_tiny", read_json(layout.train("test_tiny") / "train.json")["model"]).state_dict()
        end = torch.load(layout.train("test_tiny") / "checkpoint.pt", weights_only=True)["model"]
        return sum(float((end[k] - start[k]).float().norm() ** 2) for k in start
                   if start[k].is_floating_point() and "running" not in k) ** 0.5

    assert moved(1e-6) <= 6 * 0.05 * 1e-6 * 1.01  # six steps of at most lr x clip each
    assert moved(0.0) > 1e-3


def test_label_smoothing_and_mixing_reach_the_loss(tmp_path, data):  # noqa: F811
    """Each setting changes what the loop optimises: the same seed gives another training loss."""
    def first_loss(**changes) -> float:
        params = make_params(epochs=1, **changes.pop("train", {}))
        if changes:
            params = params.model_copy(update={"augment": params.augment.model_copy(update=changes)})
        layout = data.layout(tmp_path / str(len(list(tmp_path.iterdir()))))
        tr.train(params, layout, "test_tiny")
        return read_json(layout.train("test_tiny") / "history.json")[0]["train_loss"]

    plain = first_loss()
    assert first_loss() == plain  # same seed, same loss
    smoothed = first_loss(train={"label_smoothing": 0.3})
    assert smoothed != plain and smoothed > 0.3 * 0.5  # smoothing keeps the loss off zero
    assert first_loss(mixup_alpha=0.4) != plain
    assert first_loss(cutmix_alpha=1.0) != plain
    assert first_loss(cutout=4) != plain


def test_early_stopping_stops(tmp_path, data):  # noqa: F811
    params = make_params("test_linear", epochs=20, early_stopping=2, optimizer={"lr": 1e-12, "weight_decay": 0})
    summary = tr.train(params, data.layout(tmp_path), "test_linear")
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["best_epoch"] == 0
    again = tr.train(params, data.layout(tmp_path), "test_linear")  # a re-run stays stopped
    assert again["epochs_run"] == 3


def test_ema_weights_are_selected_and_evaluated(tmp_path, data):  # noqa: F811
    layout = data.layout(tmp_path)
    summary = tr.train(make_params(epochs=1, ema_decay=0.9, optimizer={"lr": 0.1}), layout, "test_tiny")
    out = layout.train("test_tiny")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    raw, ema = ckpt["model"], ckpt["ema"]["module"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    # one epoch: the best epoch is the last, and model.pt holds the EMA's weights, not the raw ones
    best = torch.load(out / "model.pt", weights_only=True)
    assert summary["ema"] and summary["best_epoch"] == 0 and all(torch.equal(best[k], ema[k]) for k in best)
    # val_acc is the EMA's accuracy, val_acc_raw the raw model's, each recomputed here
    history = read_json(out / "history.json")
    model = build_model("test_tiny", read_json(out / "train.json")["model"]).eval()
    stats = load_stats(layout)
    x = aug.normalize(aug.to_nchw(data.split("val")[0]), stats.mean, stats.std)
    y = torch.as_tensor(data.split("val")[1])
    for weights, key in ((ema, "val_acc"), (raw, "val_acc_raw")):
        model.load_state_dict(weights)
        with torch.inference_mode():
            assert float((model(x).argmax(1) == y).float().mean()) == pytest.approx(history[0][key])


def test_soft_target_loss_matches_hard_with_smoothing():
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    hard = engine.criterion(logits, y, 0.1)
    soft = engine.criterion(logits, torch.nn.functional.one_hot(y, 4).float(), 0.1)
    assert hard.item() == pytest.approx(soft.item(), rel=1e-6)


def test_train_tracked_logs_to_mlflow(tmp_path, data, monkeypatch):  # noqa: F811
    from tasks import tracking

    monkeypatch.chdir(tmp_path)
    params = make_params(epochs=2)
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})})
    parent = tracking.start_run(params, "pipeline")
    summary = tr.train_tracked(params, data.layout(tmp_path), "test_tiny", parent)
    run_id = tracking.arch_run_id(data.layout(tmp_path), "test_tiny")
    run = tracking.client(params).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["arch"] == "test_tiny" and run.data.params["train.optimizer.name"] == "sgd"
    assert run.data.metrics["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    val_acc = tracking.client(params).get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in val_acc) == [0, 1]
    # a later pipeline run reuses the finished checkpoint; its new run still gets every epoch
    tr.train_tracked(params, data.layout(tmp_path), "test_tiny", parent)
    second = tracking.arch_run_id(data.layout(tmp_path), "test_tiny")
    assert second != run_id
    assert sorted(m.step for m in tracking.client(params).get_metric_history(second, "val_acc")) == [0, 1]


def test_per_architecture_override_is_used(tmp_path, data):  # noqa: F811
    params = make_params(epochs=1, overrides={"test_tiny": {"optimizer": {"name": "adam", "lr": 0.003}, "epochs": 2}})
    summary = tr.train(params, data.layout(tmp_path), "test_tiny")
    ckpt = torch.load(data.layout(tmp_path).train("test_tiny") / "checkpoint.pt", weights_only=True)
    assert summary["epochs_run"] == 2
    assert "exp_avg" in next(iter(ckpt["optimizer"]["state"].values()))
    assert ckpt["optimizer"]["param_groups"][0]["base_lr"] == 0.003


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_onecycle_cycles_momentum_against_lr(name):
    model = nn.Linear(4, 2)
    opt = optim.build_optimizer(model, OptimizerParams(name=name, momentum=0.9), torch.device("cpu"))
    s = optim.Schedule(ScheduleParams(name="onecycle", onecycle_pct_start=0.3), 10, 10)
    seen = []
    for step in range(100):
        s.set_lr(opt, step)
        group = opt.param_groups[0]
        seen.append((group["lr"], group["betas"][0] if name == "adamw" else group["momentum"]))
    lr, momentum = zip(*seen)
    peak = max(range(100), key=lr.__getitem__)
    assert momentum[0] == pytest.approx(0.95) and momentum[peak] == pytest.approx(0.85) and momentum[-1] > 0.94
    assert min(range(100), key=momentum.__getitem__) == peak  # lowest momentum where lr is highest

    # Turned off, or on an optimizer asked for no momentum: the optimizer's own setting stays.
    own = OptimizerParams(name=name, momentum=0.9, betas=(0.8, 0.999))
    plain = optim.build_optimizer(model, own, torch.device("cpu"))
    optim.Schedule(ScheduleParams(name="onecycle", onecycle_momentum=None), 10, 10).set_lr(plain, 50)
    group = plain.param_groups[0]
    assert (group["betas"][0] if name == "adamw" else group["momentum"]) == (0.8 if name == "adamw" else 0.9)
    no_momentum = optim.build_optimizer(model, OptimizerParams(name="sgd", momentum=0), torch.device("cpu"))
    optim.Schedule(ScheduleParams(name="onecycle"), 10, 10).set_lr(no_momentum, 50)
    assert no_momentum.param_groups[0]["momentum"] == 0
