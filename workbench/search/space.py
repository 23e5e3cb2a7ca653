"""Search spaces as data (``experiments/search/*.yaml``), validated before any trial runs.

A space names a base run config, the parameters to search (dotted ``RunConfig`` fields),
the objective (a metric of the validation split), the trial budget, the sampler and the
pruner, and settings to evaluate first (the paper's hand-picked ones). ``load_space``
checks the file's structure with pydantic, then checks it against the run config: the
base run resolves, both corners of the space and every enqueued setting give a valid
``RunConfig``, the sampler and pruner build with their options. Each error names its field.

Optuna is imported inside functions only, so loading a space stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.config import ConfigError, RunConfig
from workbench.errors import UserError
from workbench.provenance import short_hash
from workbench.registry import Registry

SAMPLERS: Registry[Callable[..., Any]] = Registry("sampler")
PRUNERS: Registry[Callable[..., Any]] = Registry("pruner")
# Objective metrics: a key of ``workbench.mini.evaluate.evaluate``'s result on the validation split.
METRICS: Registry[str] = Registry("metric")
METRICS.register("avg_at_k", "avg_at_k")
METRICS.register("pass_at_k", "pass_at_k")

# Fields a trial sets itself: the seed comes from ``seeds``, the evaluation split is always
# the validation split (no test-set tuning), and intermediate reports follow ``eval_every``.
MANAGED = ("seed", "name", "group", "eval.benchmarks", "train.eval_every")
VALIDATION_SPLIT = "validation"
GAP_TOLERANCE = 1e-9  # float sums such as 0.3 + 0.05 must not reject the paper's 30/35


@SAMPLERS.register("tpe")
def _tpe(seed: int | None, **options: Any):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, **options)


@SAMPLERS.register("random")
def _random(seed: int | None, **options: Any):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed, **options)


@PRUNERS.register("median")
def _median(**options: Any):
    import optuna

    return optuna.pruners.MedianPruner(**options)


@PRUNERS.register("percentile")
def _percentile(**options: Any):
    import optuna

    return optuna.pruners.PercentilePruner(**options)


@PRUNERS.register("threshold")
def _threshold(**options: Any):
    import optuna

    return optuna.pruners.ThresholdPruner(**options)


@PRUNERS.register("successive_halving")
def _successive_halving(**options: Any):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(**options)


@PRUNERS.register("hyperband")
def _hyperband(**options: Any):
    import optuna

    return optuna.pruners.HyperbandPruner(**options)


@PRUNERS.register("none")
def _nop(**options: Any):
    import optuna

    return optuna.pruners.NopPruner(**options)


class SearchSpaceError(UserError, ValueError):
    """An invalid search space; the message names each offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamSpec(_Strict):
    """One searched parameter. ``above`` names an earlier parameter: this one is drawn from
    ``[that value + min_gap, high]``, so the pair is ordered by construction (PTS p1 < p2)."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None
    choices: tuple[Any, ...] | None = None
    above: str | None = None
    min_gap: Annotated[float, Field(gt=0)] = 0.01

    @model_validator(mode="after")
    def _range(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.above is not None:
                raise ValueError("a categorical parameter takes choices, not low / high / above")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: only for type categorical (this one is {self.type})")
        if self.low is None or self.high is None:
            raise ValueError(f"low and high are required for a {self.type} parameter")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: a log-scale range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def bounds(self, parent_value: float | None) -> tuple[float, float]:
        """The range to draw from, given the value of the ``above`` parameter (if any)."""
        assert self.low is not None and self.high is not None
        low = self.low if parent_value is None else max(self.low, parent_value + self.min_gap)
        return low, self.high

    def contains(self, value: Any, parent_value: float | None) -> bool:
        if self.type == "categorical":
            return value in (self.choices or ())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low, high = self.bounds(parent_value)
        return low - GAP_TOLERANCE <= value <= high + GAP_TOLERANCE


class SamplerSpec(_Strict):
    name: str = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(SAMPLERS.unknown_message(v))
        return v


class PrunerSpec(_Strict):
    name: str = "median"
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PRUNERS:
            raise ValueError(PRUNERS.unknown_message(v))
        return v


class Enqueued(_Strict):
    """A setting evaluated as a trial of the study, with the same budget as the others."""

    label: str
    params: dict[str, Any]
    run: str | None = None  # the grid run (experiments/runs) this setting stands for


class PlotSpec(_Strict):
    contour: tuple[str, str] | None = None  # default: the first ``above`` pair
    slice: tuple[str, ...] | None = None  # default: every parameter


class SearchSpace(_Strict):
    """A whole search: what is searched, how, and for how long."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    base: str  # a run id of experiments/runs, or a run config path
    scale: str | None = None
    metric: str = "avg_at_k"
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: Annotated[int, Field(gt=0)]
    seeds: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1)] = (0,)
    eval_every: Annotated[int, Field(gt=0)]
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    fixed: dict[str, Any] = {}
    params: Annotated[dict[str, ParamSpec], Field(min_length=1)]
    enqueue: tuple[Enqueued, ...] = ()
    plots: PlotSpec = PlotSpec()

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(METRICS.unknown_message(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {list(v)}")
        return v

    @field_validator("params")
    @classmethod
    def _run_config_fields(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        _check_fields(v, "a searched parameter")
        seen: list[str] = []
        for name, p in v.items():
            if p.above is not None:
                if p.above not in seen:
                    raise ValueError(
                        f"{name}.above: {p.above!r} must be a parameter listed before {name!r} "
                        f"(earlier parameters: {', '.join(seen) or 'none'})"
                    )
                parent = v[p.above]
                if parent.type == "categorical":
                    raise ValueError(f"{name}.above: {p.above!r} is categorical; above needs a numeric parameter")
                assert parent.high is not None and p.high is not None
                if parent.high + p.min_gap > p.high + GAP_TOLERANCE:
                    raise ValueError(
                        f"{name}: high ({p.high}) must be >= {p.above}.high + min_gap "
                        f"({parent.high} + {p.min_gap}), or some draws of {p.above} leave no room"
                    )
            seen.append(name)
        return v

    @field_validator("fixed")
    @classmethod
    def _fixed_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_fields(v, "a fixed override")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> SearchSpace:
        both = sorted(self.fixed.keys() & self.params.keys())
        if both:
            raise ValueError(f"fixed: {both} are also searched parameters")
        if len(self.enqueue) > self.n_trials:
            raise ValueError(f"enqueue: {len(self.enqueue)} settings do not fit in n_trials ({self.n_trials})")
        labels = [e.label for e in self.enqueue]
        if len(set(labels)) != len(labels):
            raise ValueError("enqueue: labels must be distinct")
        for i, e in enumerate(self.enqueue):
            unknown = sorted(e.params.keys() - self.params.keys())
            if unknown:
                raise ValueError(f"enqueue.{i}.params: {unknown} are not searched parameters (valid: {', '.join(self.params)})")
            for name, value in e.params.items():
                p = self.params[name]
                parent = e.params.get(p.above) if p.above else None
                if p.above and parent is None:
                    raise ValueError(f"enqueue.{i}.params: {name} needs {p.above} set too")
                if not p.contains(value, parent):
                    where = f"{p.choices}" if p.type == "categorical" else "[{}, {}]".format(*p.bounds(parent))
                    raise ValueError(f"enqueue.{i}.params.{name}: {value!r} is outside the space {where}")
        for field, names in (("contour", self.plots.contour), ("slice", self.plots.slice)):
            unknown = sorted(set(names or ()) - self.params.keys())
            if unknown:
                raise ValueError(f"plots.{field}: {unknown} are not searched parameters")
        return self

    # -- derived ----------------------------------------------------------------------
    def space_hash(self, scale: str | None) -> str:
        """Identifies a study's space: resuming a study with another space is refused."""
        d = {**self.model_dump(mode="json"), "scale": scale}
        return short_hash(d)

    def make_sampler(self, trial_number: int | None = None):
        """The sampler; seeded per trial, so parallel workers never draw the same random stream."""
        seed = self.sampler.seed
        if seed is not None and trial_number is not None:
            seed = seed * 1_000_003 + trial_number
        return SAMPLERS.get(self.sampler.name)(seed, **self.sampler.options)

    def make_pruner(self):
        return PRUNERS.get(self.pruner.name)(**self.pruner.options)

    def contour_params(self) -> tuple[str, str] | None:
        if self.plots.contour:
            return self.plots.contour
        pair = next(((p.above, n) for n, p in self.params.items() if p.above), None)
        if pair:
            return pair  # type: ignore[return-value]
        names = list(self.params)
        return (names[0], names[1]) if len(names) >= 2 else None

    def slice_params(self) -> list[str]:
        return list(self.plots.slice or self.params)


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """Draw (or, for a resumed or enqueued trial, read back) the trial's parameters."""
    values: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.type == "categorical":
            values[name] = trial.suggest_categorical(name, list(p.choices or ()))
            continue
        low, high = p.bounds(values[p.above] if p.above else None)
        if p.type == "int":
            values[name] = trial.suggest_int(name, math.ceil(low), math.floor(high), log=p.log, step=int(p.step or 1))
        else:
            values[name] = trial.suggest_float(name, low, high, log=p.log, step=p.step)
    return values


def trial_overrides(space: SearchSpace, params: Mapping[str, Any], *, seed: int, name: str) -> dict[str, Any]:
    """Dotted overrides that turn the base run into one trial's training run."""
    return {
        **space.fixed,
        **params,
        "seed": seed,
        "name": name,
        "train.eval_every": space.eval_every,
        "eval.benchmarks": [VALIDATION_SPLIT],
    }


def base_config_path(base: str) -> Path:
    """A run id of ``experiments/runs`` or a path to a run config."""
    path = Path(base)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise SearchSpaceError(f"base: no run config at {path}")
        return path
    from workbench.grid import run_file

    try:
        return run_file(base)
    except ValueError as e:
        raise SearchSpaceError(f"base: {e}") from None


def load_space(path: str | Path, *, scale: str | None = None, n_trials: int | None = None) -> tuple[SearchSpace, str | None]:
    """Load and fully validate a search space; returns it with its effective scale.
    ``n_trials`` replaces the file's trial budget (``workbench search --trials``).

    Raises ``SearchSpaceError`` (one message naming every offending field) before anything
    is created: no study, no storage, no run directory.
    """
    from workbench.config import read_yaml

    try:  # the run configs' YAML rules: no repeated keys, 1e-3 is a float
        data = read_yaml(path, what="search space")
    except ConfigError as e:
        raise SearchSpaceError(str(e)) from None
    return parse_space(data, source=str(path), scale=scale, n_trials=n_trials)


def parse_space(
    data: Any, *, source: str = "search space", scale: str | None = None, n_trials: int | None = None
) -> tuple[SearchSpace, str | None]:
    if not isinstance(data, Mapping):
        raise SearchSpaceError(f"{source}: a search space must be a mapping, got {type(data).__name__}")
    if n_trials is not None:
        data = {**data, "n_trials": n_trials}
    try:
        space = SearchSpace.model_validate(dict(data))
    except ValidationError as e:
        raise SearchSpaceError(f"{source}: " + "; ".join(_format_error(err) for err in e.errors())) from None
    scale = scale or space.scale
    try:
        check_space(space, scale)
    except SearchSpaceError as e:
        raise SearchSpaceError(f"{source}: {e}") from None
    return space, scale


def check_space(space: SearchSpace, scale: str | None) -> None:
    """Checks that need the run config: every corner and enqueued setting must validate."""
    from workbench.grid import resolve_config

    base = base_config_path(space.base)
    if scale is not None:
        from workbench.grid import load_scale

        try:
            load_scale(scale)
        except ValueError as e:
            raise SearchSpaceError(f"scale: {e}") from None
    settings = {"the low corner of params": corner(space, "low"), "the high corner of params": corner(space, "high")}
    settings.update({f"enqueue.{i} ({e.label})": dict(e.params) for i, e in enumerate(space.enqueue)})
    cfg = None
    for where, params in settings.items():
        try:
            cfg = resolve_config(base, scale=scale, overrides=trial_overrides(space, params, seed=space.seeds[0], name="check"))
        except ConfigError as e:
            raise SearchSpaceError(f"{where} gives an invalid run config: {str(e).split(': ', 1)[-1]}") from None
    assert cfg is not None
    if space.eval_every >= cfg.train.total_steps:
        raise SearchSpaceError(
            f"eval_every ({space.eval_every}) must be < the run's steps ({cfg.train.total_steps}), "
            "or no intermediate value is reported and nothing can be pruned"
        )
    for field, build in (("sampler", space.make_sampler), ("pruner", space.make_pruner)):
        try:
            build()
        except (TypeError, ValueError) as e:
            raise SearchSpaceError(f"{field}.options: {e}") from None


def corner(space: SearchSpace, which: Literal["low", "high"]) -> dict[str, Any]:
    """Every parameter at its low (or high) end; ``above`` parameters just above their parent."""
    out: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.type == "categorical":
            out[name] = (p.choices or ())[0 if which == "low" else -1]
            continue
        low, high = p.bounds(out[p.above] if p.above else None)
        out[name] = (
            (low if which == "low" else high)
            if p.type == "float"
            else int(math.ceil(low) if which == "low" else math.floor(high))
        )
    return out


def _check_fields(names: Mapping[str, Any], what: str) -> None:
    valid = run_config_fields()
    for name in names:
        if name in MANAGED:
            raise ValueError(f"{name}: set by the search itself, not {what} ({', '.join(MANAGED)} are managed)")
        if name not in valid:
            section = name.rsplit(".", 1)[0] if "." in name else ""
            near = [v for v in valid if v.startswith(section + ".")] if section else []
            hint = f"; fields of {section}: {', '.join(near)}" if near else "; e.g. pts.phase1_end_frac, gate.lambda_high"
            raise ValueError(f"{name!r} is not a RunConfig field{hint}")


def run_config_fields() -> set[str]:
    """Every dotted leaf field of ``RunConfig`` (``gate.lambda_high``, ``seed``, ...)."""
    out: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                out.add(f"{prefix}{name}")

    walk(RunConfig, "")
    return out


def _format_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        model = _model_at(err["loc"][:-1])
        valid = f" (valid keys here: {', '.join(model.model_fields)})" if model else ""
        return f"{loc}: unknown key{valid}"
    return f"{loc}: {msg}" if loc else msg


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model a validation error's location points into (for listing its valid keys)."""
    if not loc:
        return SearchSpace
    nested = {"sampler": SamplerSpec, "pruner": PrunerSpec, "plots": PlotSpec}
    if len(loc) == 1:
        return nested.get(str(loc[0]))
    if len(loc) == 2:
        return {"params": ParamSpec, "enqueue": Enqueued}.get(str(loc[0]))
    return None
