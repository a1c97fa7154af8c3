"""A study file: a base config, the runs that differ from it, the budget that makes them
comparable, and what the summary shows.

    description: Attention or not, by source length (Bahdanau et al. 2015, Figure 2)
    task: translation                  # translation | captioning | long_dependency | decode
    base: ../configs/default.yaml      # optional, relative to the study file
    overrides: [data.corpus=tatoeba]   # every run
    budget: {max_steps: 2000}          # or {time_budget: MINUTES} or {max_epochs: N}
    seeds: [1, 2, 3]                   # optional: every run once per seed, in <run>/seed-<n>/
    baseline: cho2014                  # optional: every other run is tested against it (paired)
    runs:                              # name -> its overrides, or {config: FILE, overrides: [...]}
      cho2014: [model.attention=none]
      luong2015: {config: ../configs/luong2015.yaml, overrides: [train.lr=1e-3]}
    grid:                              # every combination of these values (with runs: for each run)
      model.dec_cell: [rnn, gru, lstm]
    summary:
      metrics: [test_bleu_beam, test_bleu_greedy]
      plots: [bleu_by_length]
      pairs: [[luong2015, cho2014]]    # optional: further paired tests, run against run

A ``decode`` study trains nothing: it decodes the validation and test sets of a finished run
(``model``, a run folder relative to the working directory) once per search setting of its
runs and grid; a setting is chosen on ``valid_bleu``, never on the test split.

A run can build on an earlier run of the study, seed by seed (a ladder: the sequence_level study):

    runs:
      single: [train.keep_checkpoints=5]
      averaged: {average: single, last: 5}      # the mean of its last 5 step checkpoints, scored
      mrt: {from: averaged, overrides: [train.objective=mrt], budget: {max_steps: 400}}  # fine-tuned from it
      ensemble: {ensemble: averaged}            # one run: every seed's model decoding together, scored

Such a run waits until what it reads has finished (``seq2seq.study.stages``).

``--budget`` on the command line makes another study, in its own folder
(``<study>-budget-<value>``): runs trained to one budget are never mixed with another's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seq2seq.config import Config, ConfigError, config_from_dict, load_config
from seq2seq.options import read_yaml_mapping

TASKS = ("translation", "captioning", "long_dependency", "decode")
BUDGETS = {"max_steps": "training steps", "time_budget": "minutes of training", "max_epochs": "epochs"}


STAGES = ("average", "ensemble", "from")


def run_folder(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}/seed-{seed}"


@dataclass(frozen=True)
class Stage:
    """A run made from another run of the study (its ``source``) instead of from scratch."""

    kind: str  # average (a seed's step checkpoints) | ensemble (all seeds at once) | from (fine-tuned)
    source: str
    last: int = 0  # average: how many of the newest step checkpoints

    def describe(self) -> str:
        return {"average": f"the mean of the last {self.last} step checkpoints of `{self.source}`",
                "ensemble": f"an ensemble of every seed of `{self.source}`",
                "from": f"fine-tuned from `{self.source}`"}[self.kind]


@dataclass
class RunSpec:
    name: str
    overrides: list[str]  # the run's own overrides (what makes it differ)
    config: Config  # resolved: base, study overrides, run overrides, budget, seed, tracking
    config_file: Path | None = None  # the run's own config file, in place of the study's base
    seed: int | None = None  # a seed replicate of the study's seeds (None: the config's seed, no subfolder)
    stage: Stage | None = None  # built from another run of the study (None: trained from scratch)

    @property
    def folder(self) -> str:
        """Its run folder, relative to the study's folder."""
        return run_folder(self.name, self.seed)

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} (seed {self.seed})"


@dataclass
class Study:
    name: str
    path: Path
    task: str
    description: str = ""
    base: Path | None = None
    overrides: list[str] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)
    runs: dict[str, tuple[Path | None, list[str]]] = field(default_factory=dict)  # name -> (config file, overrides)
    model: Path | None = None  # decode studies: the finished run they decode with
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # seed replicates (empty: one run each, the config's seed)
    baseline: str | None = None  # the run every other run is tested against (in a grid: at each point)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # further tests: (run, the run it is tested against)
    folder_name: str = ""  # the study's folder under the root (default: its name)
    stages: dict[str, Stage] = field(default_factory=dict)  # runs built from other runs
    run_budgets: dict[str, dict[str, float]] = field(default_factory=dict)  # runs with a budget of their own
    root: Path = Path("studies")  # where study folders go (``--root``): fine-tuning runs name their source by it

    @property
    def folder(self) -> str:
        return self.folder_name or self.name

    def baseline_of(self, run: str) -> str | None:
        """The run ``run`` is tested against: the baseline, or in a grid of named runs, the
        baseline at the same grid point (``copy_gru,length=50`` for ``copy_lstm,length=50``);
        None for a baseline itself and where there is none."""
        if self.baseline is None:
            return None
        point = run.partition(",")[2] if self.baseline not in self.runs else ""
        base = f"{self.baseline},{point}" if point else self.baseline
        return base if base in self.runs and base != run else None

    def budget_line(self) -> str:
        """How the runs are meant to be comparable, in words (the summary says what they recorded)."""
        if self.task == "decode":
            return f"every run decodes the validation and test sets of the same trained model ({self.model})"
        (key, value), = self.budget.items()
        others = [n for n in self.runs if n in self.stages or n in self.run_budgets]
        if others:
            return f"every run but {', '.join(others)} trains for {value:g} {BUDGETS[key]}; those are built " \
                   f"from other runs or have budgets of their own"
        return f"every run trains for {value:g} {BUDGETS[key]}" + (
            " (equal steps)" if key == "max_steps" else " (equal wall-clock time: CPU contention matters)"
            if key == "time_budget" else " (equal epochs of the batch plan)")

    def with_budget(self, value: float) -> "Study":
        """The same study at another budget value in the same unit (``--budget``), in a folder of its own."""
        if self.task == "decode":
            raise ConfigError(f"study {self.name} decodes a trained model: it has no training budget")
        (key, old), = self.budget.items()
        if key == "max_steps" or key == "max_epochs":
            if not float(value).is_integer():
                raise ConfigError(f"--budget {value:g}: study {self.name} counts {BUDGETS[key]}, a whole number")
            value = int(value)
        if value == old:
            return self
        return Study(**{**self.__dict__, "budget": {key: value}, "folder_name": f"{self.name}-budget-{value:g}"})

    def with_seeds(self, seeds: list[int]) -> "Study":
        """The same study with these seed replicates (``--seeds``)."""
        if not seeds and any(stage.kind == "ensemble" for stage in self.stages.values()):
            raise ConfigError(f"study {self.name}: an ensemble run joins the seeds of a run: --seeds lists none")
        return Study(**{**self.__dict__, "seeds": _seeds(self.path, seeds, self.task)})

    def run_specs(self) -> list[RunSpec]:
        """Every run (every seed of it) with its resolved config (one-line ConfigError naming the
        run when one is bad)."""
        budget = [f"train.{k}={v}" for k, v in self.budget.items()]
        if self.budget and "time_budget" not in self.budget:
            budget.append("train.time_budget=null")
        base = self.model / "config.yaml" if self.task == "decode" else self.base
        if self.task == "decode" and not base.is_file():
            raise ConfigError(f"study {self.name}: model {self.model} is not a run folder (train it first)")
        saved = None  # a decode study's model as it was trained (options added since: as it computed them)
        if self.task == "decode":
            saved, base = config_from_dict(read_yaml_mapping(base, "run config", "a mapping")).to_dict(), None
        specs: list[RunSpec] = []
        for name, (config_file, own) in self.runs.items():
            stage = self.stages.get(name)
            if stage is not None and stage.kind != "from":  # scored, not trained: the source's config
                sources = [s for s in specs if s.name == stage.source]
                specs += [RunSpec(name, [], s.config, s.config_file, s.seed, stage) for s in sources] \
                    if stage.kind == "average" else [RunSpec(name, [], sources[0].config, None, None, stage)]
                continue
            limits = self.run_budgets.get(name)  # in place of the study's budget, whatever its unit
            own_budget = [f"train.{k}={limits.get(k, 'null')}" for k in BUDGETS] if limits else []
            for seed in self.seeds or [None]:
                extra = [f"train.seed={seed}"] * (seed is not None) + [
                    f"tracking.group={self.folder}", f"tracking.name={self.folder}/{run_folder(name, seed)}"]
                if stage is not None:
                    extra.append(f"train.init_from={self.root / self.folder / run_folder(stage.source, seed)}")
                try:
                    cfg = load_config(config_file or base, [*self.overrides, *own, *budget, *own_budget, *extra],
                                      base=saved)
                except ConfigError as err:
                    raise ConfigError(f"study {self.name}, run {name}: {err}") from None
                specs.append(RunSpec(name, own, cfg, config_file, seed, stage))
        return specs


def load_study(path: str | Path) -> Study:
    """Read and check a study file; any problem is a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.suffix and not path.exists():  # a bare name means experiments/studies/NAME.yaml
        path = Path(__file__).resolve().parents[2] / "experiments" / "studies" / f"{path}.yaml"
    raw = read_yaml_mapping(path, "study file", "a mapping (task, runs, ...)")
    known = {"description", "task", "base", "overrides", "budget", "runs", "grid", "model", "summary", "seeds",
             "baseline"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"study file {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    task = raw.get("task", "translation")
    if task not in TASKS:
        raise ConfigError(f"study file {path}: task={task!r} is not one of: {', '.join(TASKS)}")
    summary = raw.get("summary") or {}
    runs, stages, run_budgets = _runs(path, raw.get("runs") or {}, raw.get("grid") or {}, task)
    study = Study(
        name=path.stem, path=path, task=task, description=str(raw.get("description", "")),
        base=path.parent / raw["base"] if raw.get("base") else None,
        overrides=_strings(path, "overrides", raw.get("overrides") or []),
        budget=_budget(path, raw.get("budget"), task),
        runs=runs, stages=stages, run_budgets=run_budgets,
        model=Path(raw["model"]) if raw.get("model") else None,
        metrics=_strings(path, "summary.metrics", summary.get("metrics") or []),
        plots=_strings(path, "summary.plots", summary.get("plots") or []),
        seeds=_seeds(path, raw.get("seeds") or [], task),
        baseline=str(raw["baseline"]) if raw.get("baseline") is not None else None,
        pairs=_pairs(path, summary.get("pairs") or [], runs),
    )
    if study.baseline is not None and not any(study.baseline_of(run) or run.partition(",")[0] == study.baseline
                                              for run in study.runs):
        raise ConfigError(f"study file {path}: baseline {study.baseline!r} is not one of its runs "
                          f"({', '.join(study.runs)})")
    if any(stage.kind == "ensemble" for stage in stages.values()) and not study.seeds:
        raise ConfigError(f"study file {path}: an ensemble run joins the seeds of a run: give 'seeds'")
    if task == "decode" and study.model is None:
        raise ConfigError(f"study file {path}: a decode study needs 'model', the run folder it decodes with")
    from seq2seq.study.plots import PLOTTERS  # here: the plots module reads this one's types

    bad_plots = [p for p in study.plots if p not in PLOTTERS]
    if bad_plots:
        raise ConfigError(f"study file {path}: unknown plot(s) {', '.join(bad_plots)} (known: {', '.join(PLOTTERS)})")
    return study


def _strings(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"study file {path}: '{key}' must be a list of strings")
    return [str(v) for v in value]


def _pairs(path: Path, value: Any, runs: dict[str, Any]) -> list[tuple[str, str]]:
    """``summary.pairs``: [run, the run it is tested against], each a run of the study (in a
    grid, a run at one point: ``"copy_lstm,length=50"``), each pair once."""
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == 2 for v in value):
        raise ConfigError(f"study file {path}: 'summary.pairs' must be a list of [run, run it is tested against]")
    pairs = [(str(a), str(b)) for a, b in value]
    unknown = sorted({name for pair in pairs for name in pair} - set(runs))
    if unknown:
        raise ConfigError(f"study file {path}: summary.pairs names {', '.join(unknown)}, not runs of the study")
    seen: set[frozenset[str]] = set()
    for run, against in pairs:  # one test of two runs, either way round, is enough
        if run == against or frozenset((run, against)) in seen:
            raise ConfigError(f"study file {path}: summary.pairs tests {run} against "
                              f"{'itself' if run == against else against + ' twice'}")
        seen.add(frozenset((run, against)))
    return pairs


def _seeds(path: Path, value: Any, task: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"study file {path}: 'seeds' must be a list of whole numbers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"study file {path}: 'seeds' lists a seed twice: {value}")
    if value and task == "decode":
        raise ConfigError(f"study file {path}: a decode study decodes one trained model deterministically: "
                          f"it takes no seeds")
    return list(value)


def _budget(path: Path, value: Any, task: str) -> dict[str, float]:
    if task == "decode":
        return {}
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in BUDGETS:
        raise ConfigError(f"study file {path}: 'budget' must name one of {', '.join(BUDGETS)} "
                          f"(e.g. budget: {{max_steps: 2000}}), got {value!r}")
    (key, amount), = value.items()
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
        raise ConfigError(f"study file {path}: budget {key} must be a positive number, got {amount!r}")
    return {key: amount}


RunEntries = dict[str, tuple[Path | None, list[str]]]


def _runs(path: Path, runs: Any, grid: Any, task: str) -> tuple[RunEntries, dict[str, Stage], dict[str, dict]]:
    """Named runs, or the grid's combinations (named ``key=value,key=value`` by their values), or,
    given both, every named run at every combination (named ``run,key=value,...``); the runs
    built from earlier runs (:class:`Stage`), and the runs with a budget of their own."""
    if not isinstance(runs, dict) or not isinstance(grid, dict):
        raise ConfigError(f"study file {path}: 'runs' and 'grid' must be mappings")
    out: RunEntries = {}
    stages: dict[str, Stage] = {}
    budgets: dict[str, dict] = {}
    for name, entry in runs.items():
        name = str(name)
        if isinstance(entry, dict):
            kinds = [k for k in STAGES if k in entry]
            allowed = {"config", "overrides", "budget"} if kinds == ["from"] else {"last"} if kinds == ["average"] \
                else set() if kinds == ["ensemble"] else {"config", "overrides"}
            extra = sorted(set(entry) - allowed - set(kinds))
            if extra or len(kinds) > 1 or not kinds and "config" not in entry:
                raise ConfigError(f"study file {path}: run {name} must be a list of overrides, {{config: FILE, "
                                  f"overrides: [...]}}, {{from: RUN, overrides: [...], budget: {{...}}}}, "
                                  f"{{average: RUN, last: N}} or {{ensemble: RUN}}")
            if kinds:
                stages[name] = _stage(path, name, kinds[0], entry, out, stages, task)
            if "budget" in entry:
                budgets[name] = _budget(path, entry["budget"], task)
            own = _strings(path, f"runs.{name}", entry.get("overrides") or [])
            out[name] = (path.parent / entry["config"] if entry.get("config") else None, own)
        else:
            out[name] = (None, _strings(path, f"runs.{name}", entry or []))
    if grid and stages:
        raise ConfigError(f"study file {path}: runs built from other runs ({', '.join(stages)}) cannot take a grid")
    if grid:
        keys = list(grid)
        for key in keys:
            if not isinstance(grid[key], list) or not grid[key]:
                raise ConfigError(f"study file {path}: grid.{key} must be a non-empty list of values")
        named, out = out or {"": (None, [])}, {}
        for run, (config_file, own) in named.items():
            for values in itertools.product(*(grid[k] for k in keys)):
                name = ",".join([run] * bool(run) + [f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values)])
                if name in out:
                    raise ConfigError(f"study file {path}: two runs would be named {name!r}; rename a run")
                out[name] = (config_file, [*own, *(f"{k}={v}" for k, v in zip(keys, values))])
    if not out:
        raise ConfigError(f"study file {path}: no runs (give 'runs' or 'grid')")
    for name in out:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"study file {path}: run name {name!r} cannot be a folder name")
    return out, stages, budgets


def _stage(path: Path, name: str, kind: str, entry: dict, earlier: RunEntries, stages: dict[str, Stage],
           task: str) -> Stage:
    """The stage of run ``name``, checked: its source is an earlier run that has what it needs."""
    source = str(entry[kind])
    if task not in ("translation", "captioning"):
        raise ConfigError(f"study file {path}: run {name}: runs built from other runs need a translation or "
                          f"captioning study, not {task}")
    if source not in earlier:
        raise ConfigError(f"study file {path}: run {name} reads {source!r}, which is not a run above it")
    source_kind = stages[source].kind if source in stages else "train"
    if source_kind == "ensemble" or kind == "average" and source_kind == "average":
        raise ConfigError(f"study file {path}: run {name} cannot {kind} {source!r}, "
                          f"{'an ensemble' if source_kind == 'ensemble' else 'an average'} itself")
    last = entry.get("last", 0)
    if kind == "average" and (not isinstance(last, int) or isinstance(last, bool) or last < 1):
        raise ConfigError(f"study file {path}: run {name}: 'last' must be the number of step checkpoints to "
                          f"average (at least 1), got {last!r}")
    return Stage(kind, source, last)
