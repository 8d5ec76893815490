"""`charmlp tune`: a time-budgeted search over model kind and the main sizes, with Optuna.

Each trial is a `--budget` run (budget.py plans its steps, ensemble and dropout) written as a normal
run directory `OUT/trial-NNN`, so `charmlp runs OUT` compares them. Optuna's TPE sampler proposes
the model, its width (and the transformer's depth), the learning rate and the weight decay; the
first trial of each model is its `budget` preset as it stands (the rule's choice). A successive-
halving pruner reads the val loss at every evaluation (reported at the share of the run done) and
ends a trial that is behind; its run directory is then a finished, shorter run.

The study lives in `OUT/study.db` (SQLite): running the same command again continues it, with what
the budget has left (the seconds of the trials already run are counted); Ctrl-C keeps every
finished trial. At the end: `OUT/summary.json`, `OUT/search.png` (Optuna's optimization history)
and a one-screen summary; the best trial's run directory is the result.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import DataConfig, RunConfig, TrainConfig
from .errors import CharmlpError
from .models import get_spec, model_config, preset

# torch loads on first use (in `tune`): `check_search` and the CLI's flag errors start without it

STUDY_DB = "study.db"
STUDY_NAME = "charmlp-tune"
SUMMARY_JSON = "summary.json"
PLOT = "search.png"
MODELS = ("rnn", "gru", "transformer")  # the models with a search space
DEFAULT_MODELS = ("gru", "transformer")
MIN_TRIAL = 2.0  # seconds: the shortest trial budget
TRIAL_SHARE = 10  # by default each trial gets a tenth of the budget (at least MIN_TRIAL)


def _space(trial: Any, kind: str) -> dict[str, Any]:
    """The trial's proposal for `kind`: model fields under "model", training fields beside them."""
    if kind == "transformer":
        return {"model": {"n_embd": trial.suggest_categorical("transformer.n_embd", [32, 64, 96, 128]),
                          "n_layer": trial.suggest_int("transformer.n_layer", 2, 6)},
                "lr": trial.suggest_float("transformer.lr", 5e-4, 5e-3, log=True),
                "weight_decay": trial.suggest_float("transformer.weight_decay", 0.005, 0.2, log=True)}
    return {"model": {"n_hidden": trial.suggest_categorical(f"{kind}.n_hidden", [64, 128, 192, 256])},
            "lr": trial.suggest_float(f"{kind}.lr", 1e-3, 1e-2, log=True),
            "weight_decay": trial.suggest_float(f"{kind}.weight_decay", 0.01, 0.3, log=True)}


def _preset_params(kind: str) -> dict[str, Any]:
    """The `budget` preset of `kind` as the search's parameters: the first trial of that model."""
    train_preset, model_preset = preset(kind, "budget")
    mc = model_config(kind, **model_preset)
    params: dict[str, Any] = {"model": kind, f"{kind}.lr": train_preset["lr"],
                              f"{kind}.weight_decay": train_preset["weight_decay"]}
    if kind == "transformer":
        params.update({"transformer.n_embd": mc.n_embd, "transformer.n_layer": mc.n_layer})
    else:
        params[f"{kind}.n_hidden"] = mc.n_hidden
    return params


def trial_config(kind: str, proposal: dict[str, Any], data: str | None, budget: float, seed: int,
                 device: str) -> RunConfig:
    """A trial's run: the model's `budget` preset, the proposal over it, `budget` seconds."""
    train_preset, model_preset = preset(kind, "budget")
    tc = replace(TrainConfig(), **train_preset)
    tc = replace(tc, budget=budget, seed=seed, device=device, positions=0,
                 **{k: v for k, v in proposal.items() if k != "model"})
    mc = model_config(kind, **{**model_preset, **proposal["model"]})
    return RunConfig(DataConfig(path=data), mc, tc)


class PruneHook:
    """Feeds the trial every val loss (reported at the per cent of the run done) and asks the loop
    to end the run where the pruner says the trial is behind."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.pruned = trial, False

    def __call__(self, step: int, model: Any, lr: float, loss: Any) -> None:  # a hook that wants no step
        pass

    def wants(self, step: int) -> bool:
        return False

    def on_val(self, step: int, steps: int, val_loss: float) -> bool:
        self.trial.report(val_loss, int(100 * (step + 1) / max(1, steps)))
        self.pruned = self.trial.should_prune()
        return self.pruned


@dataclass
class TuneResult:
    """What the search found: every trial's row, the best one, the files written."""

    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    out: Path
    plot: Path | None
    seconds: float  # the budget's seconds spent, over every process of the study
    budget: float
    summary: dict[str, Any] = field(default_factory=dict)


def check_search(models: tuple[str, ...], trials: int | None) -> None:
    """A user error for a model without a search space, or a number of trials out of range."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        for m in unknown:
            get_spec(m)  # an unknown name: the registry's message
        raise CharmlpError(f"tune searches {', '.join(MODELS)}; drop {', '.join(unknown) or 'nothing'} from --models")
    if trials is not None and not 1 <= trials <= 10_000:
        raise CharmlpError(f"--trials must be between 1 and 10000, got {trials}")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CharmlpError("charmlp tune needs Optuna; install it with `pip install 'charmlp[tune]'`") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune(data: str | None, budget: float, out: str | Path, models: tuple[str, ...] = DEFAULT_MODELS,
         trials: int | None = None, seed: int = 0, device: str = "auto", progress: bool = True,
         log: Callable[[str], None] = print) -> TuneResult:
    """Search for `budget` seconds (over every process of the study in `out`; each trial's budget
    clock, see budget.py), a trial at a time, each of `budget / trials` seconds (default: a tenth
    of the budget, at least MIN_TRIAL)."""
    check_search(models, trials)
    from .data import load_dataset
    from .train import train

    load_dataset(DataConfig(path=data))  # a bad file is reported before the study is made
    optuna = _optuna()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{(out / STUDY_DB).resolve()}", load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner())
    saved = study.user_attrs.get("search")
    search = {"data": data, "models": list(models)}
    if saved is not None and saved != search:
        raise CharmlpError(f"{out} holds a search of other data or models ({saved}); give another --out")
    study.set_user_attr("search", search)
    trial_budget = max(MIN_TRIAL, budget / (trials or TRIAL_SHARE))
    if not study.trials:  # start from the rule's choice for each model
        for kind in models:
            study.enqueue_trial(_preset_params(kind))

    def spent() -> float:
        return sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False))

    ran: list[int] = []  # the numbers of this process's trials

    def objective(trial: Any) -> float:
        ran.append(trial.number)
        kind = trial.suggest_categorical("model", list(models))
        cfg = trial_config(kind, _space(trial, kind), data, min(trial_budget, budget - spent()), seed, device)
        run_dir = out / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", run_dir.name)
        hook = PruneHook(trial)
        t0 = time.perf_counter()
        try:
            result = train(cfg, out_dir=run_dir, progress=progress, hooks=(hook,), force=True)
        except BaseException:  # Ctrl-C, a diverged run: its wall time counts
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise
        s = result.summary
        trial.set_user_attr("seconds", s["budget_used"])  # the budget's clock: the process's start-up not counted
        trial.set_user_attr("test_loss", s["test_loss"])
        trial.set_user_attr("members", getattr(result.config.model, "members", 1))
        if hook.pruned:
            raise optuna.TrialPruned()
        return s["val_loss"]

    # a trial starts while half its budget is left; the last one gets what is left
    while budget - spent() >= max(MIN_TRIAL, 0.5 * trial_budget) and (trials is None or _done(study) < trials):
        study.optimize(objective, n_trials=1, catch=(CharmlpError,))  # a diverged trial fails alone
        r = _row(study.trials[ran[-1]])  # stored: a Ctrl-C from here on loses nothing
        log(f"trial {r['trial']}: {r['model']} {r['state']}, val {_num(r['val_loss']).strip()} in {_num(r['seconds'], 0, 1)} s")
    return _finish(study, out, budget, spent())


def _done(study: Any) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _row(t: Any) -> dict[str, Any]:
    return {"trial": t.number, "state": t.state.name.lower(), "model": t.params.get("model"),
            "params": {k.split(".", 1)[1]: v for k, v in t.params.items() if "." in k},
            "val_loss": t.value if t.value is not None else _last(t.intermediate_values),
            "test_loss": t.user_attrs.get("test_loss"), "members": t.user_attrs.get("members"),
            "seconds": t.user_attrs.get("seconds"), "run": t.user_attrs.get("run")}


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def _finish(study: Any, out: Path, budget: float, seconds: float) -> TuneResult:
    """summary.json, search.png and the result."""
    rows = [_row(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [r for r in rows if r["state"] == "complete" and r["val_loss"] is not None]
    best = min(complete, key=lambda r: r["val_loss"]) if complete else None
    plot = _plot(study, out / PLOT) if complete else None
    summary = {"budget_seconds": budget, "seconds": seconds, "best": best, "trials": rows,
               "plot": None if plot is None else plot.name}
    from .checkpoint import write_json

    write_json(out / SUMMARY_JSON, json.loads(json.dumps(summary, default=str)))
    return TuneResult(rows, best, out, plot, seconds, budget, summary)


def _plot(study: Any, path: Path) -> Path:
    """Optuna's optimization history (val loss by trial, the best so far), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    from .checkpoint import atomic_write_bytes
    from .plots import png_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its matplotlib plots are marked experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    ax.set_ylabel("val loss (nats per character)")
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    png = png_bytes(fig, dpi=100)
    matplotlib.pyplot.close(fig)
    atomic_write_bytes(path, png)
    return path


def format_summary(result: TuneResult, limit: int = 12) -> str:
    """One screen: the trials by val loss (the best `limit`), what was pruned, the best, the files."""
    rows = sorted((r for r in result.trials if r["val_loss"] is not None), key=lambda r: r["val_loss"])
    states = {s: sum(r["state"] == s for r in result.trials) for s in ("complete", "pruned", "fail")}
    lines = [f"{len(result.trials)} trials in {result.seconds:.0f} s of a {result.budget:.0f} s budget: "
             + ", ".join(f"{n} {s}" for s, n in states.items() if n),
             f"{'trial':>5}  {'state':<8} {'model':<12} {'val':>7} {'test':>7} {'s':>6}  params"]
    for r in rows[:limit]:
        params = " ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        members = f" members={r['members']}" if (r["members"] or 1) > 1 else ""
        lines.append(f"{r['trial']:>5}  {r['state']:<8} {r['model'] or '?':<12} {r['val_loss']:>7.4f} "
                     f"{_num(r['test_loss'])} {_num(r['seconds'], 6, 0)}  {params}{members}")
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more in {result.out / SUMMARY_JSON}")
    b = result.best
    if b is not None:
        lines.append(f"best: trial {b['trial']} ({b['model']}), val {b['val_loss']:.4f}, test {_num(b['test_loss']).strip()}: "
                     f"{result.out / b['run']} — try `charmlp sample {result.out / b['run']}`")
    else:
        lines.append("no trial finished: give a larger --budget")
    if result.plot is not None:
        lines.append(f"search plot: {result.plot}; compare the runs: `charmlp runs {result.out} --sort val`")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _num(v: float | None, width: int = 7, digits: int = 4) -> str:
    return f"{v:>{width}.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'—':>{width}}"
