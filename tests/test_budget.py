"""--budget: the duration parser, the planner's rule, the loop's time limit and a whole budget run."""

import dataclasses
import json
import math
import os
import signal
import time

import pytest
import torch

from charmlp import budget
from charmlp.checkpoint import read_run_config
from charmlp.config import DataConfig, RunConfig, TrainConfig, parse_duration
from charmlp.errors import CharmlpError, TrainingInterrupted
from charmlp.models import MLPConfig, model_config
from charmlp.resume import read_checkpoint
from charmlp.train import lr_at, prepare_data, resolve_device, resume, train
from conftest import assert_user_error, run_cli


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0),
                                               (" 2M ", 120.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten", "10d", "0s", "-1m", "0.5", "nanm", "inf", "8d", ""])
def test_bad_durations_are_user_errors(text):
    with pytest.raises(CharmlpError, match="--budget"):
        parse_duration(text)


def _mlp(path, **train) -> RunConfig:
    tc = TrainConfig(**{"batch_size": 32, "lr": 0.1, "seed": 5, "device": "cpu", "eval_every": 50, **train})
    return RunConfig(DataConfig(path=str(path)), MLPConfig(n_embd=8, n_hidden=64), tc)


def test_time_limit_ends_a_finished_run_that_its_config_reproduces(tiny_data, tmp_path):
    planned = 10**6  # far more steps than half a second holds
    train(_mlp(tiny_data, steps=2), progress=False)  # the process's first calls (compiled step) out of the way
    a = train(_mlp(tiny_data, steps=planned, time_limit=0.5, schedule="cosine", lr_final=0.001),
              out_dir=tmp_path / "a", progress=False)
    steps = a.summary["steps"]
    assert 1 < steps < planned and a.config.train.steps == steps and a.config.train.schedule_steps == planned
    assert 0.45 < a.summary["loop_seconds"] < 1.5  # the limit, one step and the last val evaluation
    cfg = read_run_config(tmp_path / "a")[0]
    assert (cfg.train.steps, cfg.train.schedule_steps) == (steps, planned)  # config.json: the run as taken
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == steps and rows[-1]["step"] == steps - 1 and "val_loss" in rows[-1]
    assert rows[-1]["lr"] == lr_at(cfg.train, steps - 1) > 0.09  # the planned schedule: still near its start
    # the recorded configuration (no time limit) is an ordinary run: the same losses, bit for bit
    b = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_limit=0.0)), progress=False)
    assert b.losses == a.losses and b.summary["test_loss"] == a.summary["test_loss"]


def _fake_calibration(steps_per_s: float, member_cost: float = 1.0):
    """One model steps at `steps_per_s`; m members' step costs 1 + member_cost × (m − 1) of one model's."""
    def calibrate(cfg, dataset, device, seconds, warm=True):
        cost = 1 + member_cost * (getattr(cfg.model, "members", 1) - 1)
        return budget.Calibration(steps_per_s / cost, val_seconds=0.0, eval_fixed=0.0,
                                  setup_seconds=0.0, ready=time.perf_counter())
    return calibrate


RULE = budget.EnsembleRule(fit_epochs=30.0, max_members=4, dropout=0.1, plain_epochs=10.0, plain_dropout=0.2)


def _planned(monkeypatch, tiny_data, steps_per_s: float, member_cost: float = 1.0, **model):
    monkeypatch.setattr(budget, "calibrate", _fake_calibration(steps_per_s, member_cost))
    monkeypatch.setitem(budget.RULES, "gru", RULE)
    cfg = RunConfig(DataConfig(path=str(tiny_data)), model_config("gru", n_hidden=16, **model),
                    TrainConfig(batch_size=8, budget=100.0, eval_every=0, optimizer="adamw", lr=0.005))
    cfg, dataset = prepare_data(cfg)
    return budget.plan_budget(cfg, dataset, resolve_device("cpu"), evals=lambda c: 0).cfg, len(dataset.Y["train"])


def test_a_budget_that_overfits_one_model_buys_an_ensemble(monkeypatch, tiny_data):
    # 240 training items, batches of 8: 2 steps/s for 100 s is 6.7 epochs (under 10): one model, no dropout
    one, rows = _planned(monkeypatch, tiny_data, steps_per_s=2.0)
    assert rows == 240 and (one.model.members, one.model.dropout, one.train.batch_size) == (1, 0.0, 8)
    loop = 100.0 - budget.END_FIXED
    assert one.train.steps == pytest.approx(2.0 * loop, abs=2) and one.train.knots == ((0, one.train.steps),)
    assert one.train.time_limit == pytest.approx(loop, abs=0.2)  # the budget, less nearly nothing spent
    # 4.5 steps/s: 15 epochs, past the 10 one model sees without over-fitting: one model with dropout
    plain, _ = _planned(monkeypatch, tiny_data, steps_per_s=4.5)
    assert (plain.model.members, plain.model.dropout, plain.train.batch_size) == (1, RULE.plain_dropout, 8)
    # 30 steps/s: 100 epochs for one model; 3 members, each on 8 rows of a batch of 24, ~33 epochs each
    ens, _ = _planned(monkeypatch, tiny_data, steps_per_s=30.0)
    rule = RULE
    assert (ens.model.members, ens.model.dropout, ens.train.batch_size) == (3, rule.dropout, 24)
    assert ens.train.steps == pytest.approx(10.0 * loop, abs=5)  # the ensemble's own rate
    # an ensemble's step that costs half a model more a member (its work batched): 4 members at 12
    # steps/s see 40 epochs each, past 30: the rule takes the 4, where a cost of m models would give 3
    batched, _ = _planned(monkeypatch, tiny_data, steps_per_s=30.0, member_cost=0.5)
    assert (batched.model.members, batched.train.batch_size) == (4, 32)
    assert batched.train.steps == pytest.approx(12.0 * loop, abs=5)
    # far more: capped at the rule's largest ensemble
    assert _planned(monkeypatch, tiny_data, steps_per_s=3000.0)[0].model.members == rule.max_members
    # --members or --dropout given: the rule leaves the shape alone
    fixed, _ = _planned(monkeypatch, tiny_data, steps_per_s=30.0, dropout=0.2)
    assert (fixed.model.members, fixed.model.dropout, fixed.train.batch_size) == (1, 0.2, 8)


def test_a_tiny_budget_run_ends_on_time(tiny_data, tmp_path):
    """3 s on 2 busy cores: the loop's own time within ±10 % (and 0.3 s) of the time it was planned,
    and the budget's clock (start-up excluded, see budget.py) within ±10 % of the budget and 0.5 s."""
    torch.set_num_threads(1)
    cfg = RunConfig(DataConfig(path=str(tiny_data)), model_config("gru", n_hidden=32),
                    TrainConfig(batch_size=16, budget=3.0, optimizer="adamw", lr=0.005, device="cpu"))
    s = train(cfg, out_dir=tmp_path / "run", progress=False).summary
    assert s["time_limit"] > 0.5 * 3.0  # the plan gives the loop most of the budget
    # ±10 %, and 0.3 s for a step or an evaluation that a test running beside this one slowed
    assert 0.9 * s["time_limit"] - 0.3 <= s["loop_seconds"] <= 1.1 * s["time_limit"] + 0.3, s
    assert 0.9 * 3.0 - 0.5 <= s["budget_used"] <= 1.1 * 3.0 + 0.5, s
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["budget_seconds"] == 3.0 and on_disk["steps"] == s["steps"]
    assert s["train_loss_items"] == 30 and s["train_loss_estimate"]  # a train sample the size of val (tiny: 300 items)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] == s["val_loss"]  # the loop's last evaluation is the final val loss, not a second pass
    recorded = read_run_config(tmp_path / "run")[0].train
    assert recorded.budget == 0.0 and recorded.steps == s["steps"] and math.isfinite(s["test_loss"])


def test_budget_flags(tmp_path):
    from charmlp.cli import build_parser, run_config_from_args

    def cfg_of(*argv):
        args = build_parser("train").parse_args(["train", "--out", str(tmp_path / "r"), *argv])
        args.origins = {"--preset": "the default"} if "--preset" not in argv else {}
        return run_config_from_args(args)

    planned = cfg_of("--model", "gru", "--preset", "budget")
    assert planned.train.budget == 600.0 and planned.model.members == 1  # the rule, not a constant, sizes it
    best = cfg_of("--model", "gru", "--preset", "best")  # the gru's best is --budget 10m
    assert best == planned
    rnn = cfg_of("--model", "rnn", "--preset", "best")  # the rnn's: still the constant names preset (docs/budget.md)
    assert rnn.train.budget == 0.0 and rnn.model.members == 6 and rnn.train.positions > 0
    alone = cfg_of("--model", "transformer", "--budget", "90s")  # the `budget` preset's settings
    assert alone.train.budget == 90.0 and alone.train.batch_size == 32 and alone.model.members == 1
    assert cfg_of("--model", "mlp", "--budget", "90s").train.budget == 90.0  # no `budget` preset: `best`'s
    assert cfg_of("--model", "gru", "--preset", "budget", "--steps", "50").train.budget == 0.0  # steps outrank it
    assert_user_error(run_cli("train", "--out", tmp_path / "x", "--budget", "3x"), "not a duration")
    assert_user_error(run_cli("train", "--out", tmp_path / "x", "--budget", "3s", "--steps", "9"), "--budget")


def test_a_budget_the_evaluation_alone_would_spend_is_refused(monkeypatch, tiny_data):
    def slow_val(cfg, dataset, device, seconds, warm=True):  # a val pass of 40 s: the end of the run costs ~120 s
        return budget.Calibration(10.0, val_seconds=40.0, eval_fixed=0.0, setup_seconds=0.0, ready=time.perf_counter())
    monkeypatch.setattr(budget, "calibrate", slow_val)
    cfg = RunConfig(DataConfig(path=str(tiny_data)), model_config("gru", n_hidden=16),
                    TrainConfig(batch_size=8, budget=100.0, optimizer="adamw", lr=0.005))
    cfg, dataset = prepare_data(cfg)
    with pytest.raises(CharmlpError, match=r"--budget 100s leaves 0\.0 s to train.*give `--budget 24\ds` or more"):
        budget.plan_budget(cfg, dataset, resolve_device("cpu"), evals=lambda c: 0)


def test_a_replan_fills_the_time_left_with_steps_and_the_evaluations_due():
    # n ÷ r + c (n ÷ v + 1) = left: 760 steps at 100/s, an evaluation of 0.5 s every 200 steps and one at the end
    assert budget.replanned_steps(10.0, 100.0, 0.5, 200) == 760
    assert budget.replanned_steps(10.0, 100.0, 0.5, 0) == 1000  # no evaluations
    assert budget.replanned_steps(0.1, 100.0, 0.5, 200) == 1  # out of time: one more step, then the guard


class _Clockwork:
    """A step hook: each step's lr, and `sleep` seconds after each step taken in the first
    `slow_for` seconds (a machine busy with something else, then free)."""

    def __init__(self, slow_for: float = 0.0, sleep: float = 0.0, interrupt_after: float = math.inf):
        self.slow_for, self.sleep, self.interrupt_after = slow_for, sleep, interrupt_after
        self.lrs: dict[int, float] = {}
        self.t0: float | None = None

    def __call__(self, step, model, lr, loss):
        now = time.perf_counter()
        self.t0 = now if self.t0 is None else self.t0
        self.lrs[step] = lr
        if now - self.t0 < self.slow_for:
            time.sleep(self.sleep)
        if now - self.t0 >= self.interrupt_after:
            self.interrupt_after = math.inf
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would


def _gru_budget(tiny_data, seconds: float = 3.0) -> RunConfig:
    return RunConfig(DataConfig(path=str(tiny_data)), model_config("gru", n_hidden=32),
                     TrainConfig(batch_size=16, budget=seconds, optimizer="adamw", lr=0.005, lr_final=0.00005,
                                 schedule="cosine", device="cpu"))


def _ends_on_time_with_its_schedule_complete(s: dict, tc: TrainConfig, clock: _Clockwork) -> None:
    assert 0.9 * s["time_limit"] - 0.3 <= s["loop_seconds"] <= 1.1 * s["time_limit"] + 0.3, s
    assert len(tc.knots) > 2 and tc.steps == s["steps"]  # re-planned, the steps taken recorded
    last = clock.lrs[tc.steps - 1]
    assert last == lr_at(tc, tc.steps - 1) <= tc.lr_final + 0.01 * (tc.lr - tc.lr_final)  # the cosine at its end


@pytest.mark.parametrize("case", ["slow first half", "calibrated on a busy machine"])
def test_a_budget_run_follows_the_clock(tiny_data, tmp_path, monkeypatch, case):
    """The step's speed changes after the plan: the loop still ends on time, with its schedule at
    its end; the recorded config.json replays the run bit for bit."""
    torch.set_num_threads(1)
    if case == "slow first half":  # calibrated at full speed, then 4 ms a step for the loop's first second
        clock = _Clockwork(slow_for=1.0, sleep=0.004)
    else:  # calibrated at a third of the speed the loop then steps at
        clock, calibrate = _Clockwork(), budget.calibrate
        monkeypatch.setattr(budget, "calibrate", lambda *a, **k: dataclasses.replace(
            calibrate(*a, **k), steps_per_s=calibrate(*a, **k).steps_per_s / 3))
    a = train(_gru_budget(tiny_data), out_dir=tmp_path / "a", progress=False, hooks=(clock,))
    recorded = read_run_config(tmp_path / "a")[0]
    _ends_on_time_with_its_schedule_complete(a.summary, recorded.train, clock)
    assert 0.9 * 3.0 - 0.5 <= a.summary["budget_used"] <= 1.1 * 3.0 + 0.5, a.summary
    assert recorded.train.eval_every > 0  # as planned: the replay evaluates where the run did
    b = train(dataclasses.replace(recorded, train=dataclasses.replace(recorded.train, time_limit=0.0)),
              out_dir=tmp_path / "b", progress=False)
    assert b.losses == a.losses and b.summary["test_loss"] == a.summary["test_loss"]
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()


def test_an_interrupted_budget_run_resumes_with_its_knots(tiny_data, tmp_path):
    run = tmp_path / "run"
    clock = _Clockwork(interrupt_after=1.2)  # after a few re-plans
    with pytest.raises(TrainingInterrupted):
        train(_gru_budget(tiny_data), out_dir=run, progress=False, hooks=(clock,))
    ck = read_checkpoint(run)
    assert len(ck.meta["knots"]) > 2 and ck.steps == ck.meta["knots"][-1][1]
    res = resume(run, progress=False)  # no more re-plans: on to the steps planned at the checkpoint
    recorded = read_run_config(run)[0].train
    assert [list(k) for k in recorded.knots] == ck.meta["knots"] and recorded.steps == res.summary["steps"] == ck.steps
    replay = train(dataclasses.replace(res.config, train=dataclasses.replace(recorded, time_limit=0.0)), progress=False)
    assert replay.losses == res.losses


def _reshaper(planned: tuple[int, float], steps_per_s: dict[int, float], rows: int = 240, batch: int = 8) -> budget.Reshaper:
    """The Reshaper plan_budget makes for a gru of batch `batch` on `rows` training rows, planned in
    shape `planned` (members, dropout), calibrated at `steps_per_s` (members → steps/s; a val pass
    of 0.1 s a member)."""
    cals = {m: budget.Calibration(r, val_seconds=0.1 * m, eval_fixed=0.0, setup_seconds=0.0, ready=0.0)
            for m, r in steps_per_s.items()}
    base = RunConfig(DataConfig(), model_config("gru", n_hidden=16),
                     TrainConfig(batch_size=batch, budget=100.0, eval_every=0, optimizer="adamw", lr=0.005))
    return budget.Reshaper(base, RULE, planned, cals, {m: 0.0 for m in cals}, rows, evals=lambda c: 0)


def test_the_loops_rate_rechooses_the_shape():
    rule = RULE  # 30 epochs a member, at most 4; one model's dropout past 10
    # calibrated at 2 steps/s (6.7 epochs in 100 s: one model), the loop steps at 30/s: 90 s left are 90 epochs
    r = _reshaper((1, 0.0), {1: 2.0})(rate=30.0, left=90.0, elapsed=6.0)
    cfg = r.plan.cfg
    assert (cfg.model.members, cfg.model.dropout, cfg.train.batch_size) == (3, rule.dropout, 24)
    # 3 members step at a third of one model's rate now (10/s): the loop's 90 s, less the 3 members' set-up (none)
    assert cfg.train.steps == pytest.approx(900, abs=2) and cfg.train.time_limit == pytest.approx(90.0)
    assert cfg.train.knots == ((0, cfg.train.steps),) and r.plan.val_seconds == pytest.approx(0.02)  # 3 members: 0.3 s, 15× faster
    assert r.plan.reshaped == {"from": [1, 0.0], "to": [3, 0.1], "after_seconds": 6.0}
    assert "ensemble of 3 (dropout 0.1), not one model;" in r.note and "15×" in r.note and "after 6.0 s" in r.note
    # within a factor 1.25 of the epochs the planned shape gives: it stays (no start over for a few per cent)
    assert _reshaper((1, 0.0), {1: 3.0})(rate=3.6, left=90.0, elapsed=6.0) is None  # 10.8 epochs: with dropout, or not
    # 2 members calibrated at 16 steps/s, 3 costed along the line through 1 and 2: 2 or 3 within the band
    assert _reshaper((2, 0.1), {1: 30.0, 2: 16.0})(rate=16.0, left=90.0, elapsed=6.0) is None
    # planned as an ensemble of 4 on a free machine, which then became 8× slower: one model, 15 epochs, its dropout
    slow = _reshaper((4, 0.1), {1: 40.0, 4: 12.0})(rate=1.5, left=90.0, elapsed=6.0)
    assert (slow.plan.cfg.model.members, slow.plan.cfg.model.dropout, slow.plan.cfg.train.batch_size) == (1, 0.2, 8)
    # one model steps at 40/s calibrated, 8× slower now: 5/s
    assert slow.plan.cfg.train.steps == pytest.approx(450, abs=2) and "buys one model (dropout 0.2)" in slow.note
    # 3 epochs left: one model without dropout
    assert _reshaper((4, 0.1), {1: 40.0, 4: 12.0})(rate=0.3, left=90.0, elapsed=6.0).plan.cfg.model.dropout == 0.0


def test_a_run_calibrated_on_a_busy_machine_starts_over_as_an_ensemble(tiny_data, tmp_path, monkeypatch, capsys):
    """The calibration says one model (a 1000th of the speed the loop finds); the loop, after 6 % of
    its time, finds the budget buys an ensemble and starts over in it: the run still ends on time,
    the summary says so, and config.json replays the run bit for bit."""
    torch.set_num_threads(1)
    calibrate = budget.calibrate
    monkeypatch.setattr(budget, "calibrate", lambda *a, **k: dataclasses.replace(
        calibrate(*a, **k), steps_per_s=calibrate(*a, **k).steps_per_s / 1000))
    monkeypatch.setitem(budget.RULES, "gru", budget.EnsembleRule(fit_epochs=0.05, max_members=3, dropout=0.1))
    a = train(_gru_budget(tiny_data), out_dir=tmp_path / "a", progress=False)
    s, recorded = a.summary, read_run_config(tmp_path / "a")[0]
    assert s.get("reshaped", {}).get("from") == [1, 0.0] and s["reshaped"]["to"][0] >= 2, (s, recorded.train)
    assert [recorded.model.members, recorded.model.dropout] == s["reshaped"]["to"] and recorded.model.dropout == 0.1
    assert recorded.train.batch_size == 16 * recorded.model.members and recorded.train.steps == s["steps"]
    assert "starting over in that shape" in capsys.readouterr().err
    assert 0.9 * s["time_limit"] - 0.3 <= s["loop_seconds"] <= 1.1 * s["time_limit"] + 0.3, s
    assert 0.9 * 3.0 - 0.5 <= s["budget_used"] <= 1.1 * 3.0 + 0.5, s  # the start over inside the budget
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["reshaped"] == s["reshaped"] and on_disk["n_params"] == s["n_params"]
    b = train(dataclasses.replace(recorded, train=dataclasses.replace(recorded.train, time_limit=0.0)),
              out_dir=tmp_path / "b", progress=False)
    assert b.losses == a.losses and b.summary["test_loss"] == a.summary["test_loss"]
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
