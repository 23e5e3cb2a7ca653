"""The run configuration: one frozen, validated object per training run.

Resolution order: field defaults < the method's defaults (``workbench.methods``) < the
YAML file < ``--set`` overrides. YAML files list only what differs from the defaults.
Everything is validated on load, before any compute; every error names its field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError, field_validator, model_validator

from workbench.errors import UserError
from workbench.methods import METHODS
from workbench.provenance import short_hash
from workbench.registry import Registry

BACKENDS: Registry[str] = Registry("backend")
BACKENDS.register("mini", "workbench.mini")
BACKENDS.register("verl", "workbench.backends.verl")

# Strict: a bool is not a number and "5" is not an int (YAML's `yes` or a quoted number is a
# mistake, not a value); floats accept ints. Non-finite floats are refused by ``_Section``.
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
OpenFraction = Annotated[float, Strict(), Field(gt=0.0, le=1.0)]
PosFloat = Annotated[float, Strict(), Field(gt=0.0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0.0)]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32)]  # numpy's seed range


class ConfigError(UserError, ValueError):
    """An invalid run config; the message names each offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


class GateConfig(_Section):
    """Token-level sign-consistency gate (docs/algorithm.md section 3)."""

    sign_gate: StrictBool = True
    lambda_base: PosFloat = 1.25
    lambda_high: PosFloat = 1.8
    disagree_mode: str = "interp"
    disagree_interp_beta: Fraction = 0.5
    gate_all_tokens_as: Literal["conflict"] | None = None
    gate_levels: Literal[2, 4] = 2
    cell_lambda_pos_pos: PosFloat | None = None
    cell_lambda_neg_neg: PosFloat | None = None
    cell_beta_pos_neg: Fraction | None = None
    cell_beta_neg_pos: Fraction | None = None
    # What neutral tokens (s = 0) get with the gate on; "base" is A_{lambda_base}, the project's
    # reading (docs/algorithm.md section 11; values: workbench.algo.gate.NEUTRAL_MODES).
    neutral_mode: Literal["base", "consensus", "opd", "mask"] = "base"

    @field_validator("disagree_mode")
    @classmethod
    def _known_fallback(cls, v: str) -> str:
        from workbench.algo.gate import FALLBACKS

        if v not in FALLBACKS:
            raise ValueError(FALLBACKS.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _cells_need_four_levels(self) -> GateConfig:
        cells = [f for f in type(self).model_fields if f.startswith("cell_") and getattr(self, f) is not None]
        if cells and self.gate_levels != 4:
            raise ValueError(f"{', '.join(cells)} only apply with gate_levels: 4 (got {self.gate_levels})")
        return self

    @model_validator(mode="after")
    def _neutral_needs_the_gate(self) -> GateConfig:
        if self.neutral_mode != "base" and (not self.sign_gate or self.gate_all_tokens_as is not None):
            raise ValueError(
                f"neutral_mode {self.neutral_mode!r} only applies with the gate on (sign_gate: true, no "
                f"gate_all_tokens_as; got sign_gate: {str(self.sign_gate).lower()}, gate_all_tokens_as: {self.gate_all_tokens_as})"
            )
        return self

    def route_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``workbench.algo.route_advantage``."""
        return self.model_dump()

    def needs_reference(self) -> bool:
        """Whether the routed advantage depends on ``lp_ref`` (any extrapolation factor != 1).

        ``A_lam = lam (lp_T - lp_ref) - (lp_old - lp_ref)`` is free of ``lp_ref`` only at
        ``lam = 1``. OPD (gate off, ``lambda_base = 1``) and the interp/mask/grpo fallbacks on
        every token never use ``lp_ref`` with another factor; everything else does.
        """
        if self.gate_all_tokens_as == "conflict":
            return self.disagree_mode == "preserve" and self.lambda_base != 1.0
        lams = [self.lambda_base]
        if self.sign_gate:
            lams.append(self.lambda_high)
            if self.gate_levels == 4:
                lams += [lam for lam in (self.cell_lambda_pos_pos, self.cell_lambda_neg_neg) if lam is not None]
        return any(lam != 1.0 for lam in lams)


class StabilityConfig(_Section):
    """Detached stability weight (docs/algorithm.md section 4)."""

    mode: str = "phi"
    clip: PosFloat = 2.0

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        from workbench.algo.stability import STABILITY_WEIGHTS

        if v not in STABILITY_WEIGHTS:
            raise ValueError(STABILITY_WEIGHTS.unknown_message(v))
        return v


class PTSConfig(_Section):
    """Phased teacher sampling (docs/algorithm.md section 6)."""

    enabled: StrictBool = True
    teacher_sampling_ratio: OpenFraction = 0.125
    filter_correct: StrictBool = True
    phase1_end_frac: Fraction = 0.30
    phase2_end_frac: Fraction = 0.35
    alpha0: NonNegFloat = 1.0
    alpha1: NonNegFloat = 0.1

    @model_validator(mode="after")
    def _ordered_phases(self) -> PTSConfig:
        if self.phase1_end_frac >= self.phase2_end_frac:
            raise ValueError(f"phase1_end_frac ({self.phase1_end_frac}) must be < phase2_end_frac ({self.phase2_end_frac})")
        return self

    def schedule_kwargs(self) -> dict[str, float]:
        """Keyword arguments of ``workbench.algo.pts_alpha``."""
        return self.model_dump(include={"phase1_end_frac", "phase2_end_frac", "alpha0", "alpha1"})


class SFTConfig(_Section):
    """Teacher data of the SFT-family methods (sft, seqkd, time-separated stage 1)."""

    teacher_decoding: Literal["sample", "greedy"] = "sample"
    filter_correct: StrictBool = False
    # pool: one teacher response per training prompt; pts: as many teacher responses as
    # PTS with this run's pts section would draw (the time-separated stage 1's budget).
    teacher_budget: Literal["pool", "pts"] = "pool"


class GKDConfig(_Section):
    beta: Fraction = 0.5


#: AdamW's betas for every method of both backends (the mini trainer; verl's actor and SFT
#: trainer, whose default they are): one setting, so no method differs from another by its
#: optimiser. Building a miniature world (workbench/mini/sft.py) is the models' pre-training,
#: not a method under test, and keeps (0.9, 0.98) for its from-scratch runs at a large lr.
ADAM_BETAS = (0.9, 0.999)


class OptimConfig(_Section):
    """Optimiser (AdamW, betas :data:`ADAM_BETAS`) and the PPO-clip token loss
    (docs/algorithm.md section 5)."""

    lr: PosFloat = 1e-3
    warmup_steps: NonNegInt = 0
    weight_decay: NonNegFloat = 0.0
    grad_clip: PosFloat | None = 1.0
    eps_low: Annotated[float, Strict(), Field(gt=0.0, lt=1.0)] = 0.2
    eps_high: PosFloat = 0.2
    # The G-OPD fork of verl's loss is clip_ratio_c: 3.0 and seq-mean-token-mean; the defaults
    # are the plain clip and the token mean (docs/algorithm.md section 11).
    clip_ratio_c: Annotated[float, Strict(), Field(gt=1.0)] | None = None  # dual clip on A < 0; None: off
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"

    def pg_loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``workbench.algo.ppo_clip_loss``."""
        return self.model_dump(include={"eps_low", "eps_high", "clip_ratio_c", "loss_agg_mode"})


class RolloutConfig(_Section):
    prompts_per_step: PosInt = 32
    group_size: PosInt = 8
    temperature: PosFloat = 1.0
    top_p: OpenFraction = 1.0
    max_new_tokens: PosInt | None = None  # None: the backend's own budget (mini: from the task)


class TrainConfig(_Section):
    steps: PosInt = 200
    # The share (or multiple) of ``steps`` this run trains, so that ``steps`` stays the
    # grid's common budget: the time-separated stages split it (stage 1 SFT 0.35, stage 2
    # 0.65); sft-equal-compute takes a multiple (OPD's compute on SFT steps).
    steps_frac: PosFloat = 1.0
    checkpoint_every: PosInt = 50
    eval_every: NonNegInt = 0  # 0: evaluate the final checkpoint only
    keep_checkpoints_at: tuple[Fraction, ...] = ()  # extra checkpoints, as fractions of steps
    init_from: str | None = None  # a run id of the same grid, or a checkpoint path
    sources: tuple[str, ...] | None = None  # training prompt sources; None: all

    @property
    def total_steps(self) -> int:
        """Optimizer steps this run takes: ``round(steps * steps_frac)``, at least 1."""
        return max(1, round(self.steps * self.steps_frac))


class EvalConfig(_Section):
    n_samples: PosInt = 8
    k: PosInt = 8
    temperature: PosFloat = 1.0
    top_p: OpenFraction = 1.0
    max_new_tokens: PosInt | None = None  # None: the backend's own budget (mini: from the task)
    benchmarks: tuple[str, ...] | None = None  # None: all four

    @model_validator(mode="after")
    def _k_le_n(self) -> EvalConfig:
        if self.k > self.n_samples:
            raise ValueError(f"k ({self.k}) must be <= n_samples ({self.n_samples})")
        return self


#: The PPO-clip options (``OptimConfig``) that only the policy-gradient family may change.
_PG_LOSS_OPTIONS = ("clip_ratio_c", "loss_agg_mode")
#: Fields added after runs were recorded: hashed only when set, so that a run recorded before
#: they existed keeps its ``config_hash`` (and still resumes).
_HASHED_ONLY_IF_SET = ("gate.neutral_mode", "optim.clip_ratio_c", "optim.loss_agg_mode")


class RunConfig(_Section):
    """Everything one training run needs; frozen and validated."""

    name: str | None = None
    group: str | None = None
    method: str = "sgopd"
    backend: str = "mini"
    seed: Seed = 0
    gate: GateConfig = GateConfig()
    stability: StabilityConfig = StabilityConfig()
    pts: PTSConfig = PTSConfig()
    sft: SFTConfig = SFTConfig()
    gkd: GKDConfig = GKDConfig()
    optim: OptimConfig = OptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        name = data.get("method", cls.model_fields["method"].default)
        if not isinstance(name, str) or name not in METHODS:
            raise ValueError(f"method: {METHODS.unknown_message(name)}")
        method = METHODS.get(name)
        merged: dict[str, Any] = {}
        for dotted, value in {**method.defaults, **method.fixed}.items():
            _set_dotted(merged, dotted, value)
        return _deep_merge(merged, dict(data))

    @model_validator(mode="after")
    def _method_constraints(self) -> RunConfig:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {BACKENDS.unknown_message(self.backend)}")
        method = METHODS.get(self.method)
        for dotted, want in method.fixed.items():
            got = self.get(dotted)
            if got != want:
                raise ValueError(f"{dotted}: method {self.method!r} requires {want!r}, got {got!r}")
        pg_only = [f"optim.{k}" for k in _PG_LOSS_OPTIONS if getattr(self.optim, k) != OptimConfig.model_fields[k].default]
        if pg_only and self.family != "pg":
            raise ValueError(f"{', '.join(pg_only)}: only the PPO-clip token loss reads it; method {self.method!r} has none")
        if self.method == "exopd" and self.gate.lambda_base <= 1.0:
            raise ValueError(f"gate.lambda_base: method 'exopd' needs lambda_base > 1, got {self.gate.lambda_base}")
        if self.optim.warmup_steps >= self.train.total_steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be < the run's steps ({self.train.total_steps})"
            )
        return self

    # -- access -----------------------------------------------------------------------
    def get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    @property
    def family(self) -> str:
        return METHODS.get(self.method).family

    def needs_reference(self) -> bool:
        """Whether training needs the frozen reference (initial) policy's log-probs: a
        policy-gradient method on the routed advantage whose routing uses ``lp_ref``
        (``GateConfig.needs_reference``). The one rule both backends apply."""
        method = METHODS.get(self.method)
        return method.family == "pg" and method.advantage == "routed" and self.gate.needs_reference()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """Stable hash of the resolved config (names excluded: they do not change results)."""
        d = self.to_dict()
        d.pop("name", None)
        d.pop("group", None)
        for dotted in _HASHED_ONLY_IF_SET:
            section, key = dotted.split(".")
            if d[section][key] == type(getattr(self, section)).model_fields[key].default:
                del d[section][key]
        return short_hash(d)

    def diff_from_defaults(self) -> dict[str, Any]:
        """The minimal mapping that resolves to this config (what a YAML file would list)."""
        base = RunConfig(method=self.method).to_dict()
        out = _diff(self.to_dict(), base)
        out["method"] = self.method
        return out

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> RunConfig:
        """A new validated config with dotted ``key=value`` overrides applied."""
        return parse_config(_apply_overrides(self.diff_from_defaults(), overrides))


# -- loading --------------------------------------------------------------------------


def parse_config(data: Mapping[str, Any] | None, *, source: str = "config") -> RunConfig:
    """Validate a mapping into a ``RunConfig``, raising ``ConfigError`` naming each field."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(_format_error(err) for err in e.errors())) from None


def load_config(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """Load a YAML run config (only the differences from the defaults) plus overrides."""
    path = Path(path)
    data = read_yaml(path, what="run config")
    if data is None:  # an empty file is a mistake (a wrong path, a lost edit), not "all defaults"
        raise ConfigError(
            f"{path}: empty run config; list at least the method (e.g. `method: sgopd`), or `{{}}` for all defaults"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a run config must be a mapping, got {type(data).__name__}")
    return parse_config(_apply_overrides(data, overrides), source=str(path))


class _Loader(yaml.SafeLoader):
    """YAML for configs: a repeated key is an error (PyYAML keeps the last one silently),
    and ``1e-3`` is a float as in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(
                        f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on line {seen[key]}); keep one"
                    )
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                pass  # unhashable: SafeLoader's own error says so
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, *, source: str) -> Any:
    """YAML text as Python data; every problem is one ``ConfigError`` line naming ``source``."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """A YAML file's data (None when it is empty); a missing or unreadable file is a ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what} file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    return parse_yaml(text, source=str(path))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    return " ".join((f"{where}{problem}" + (f" ({context})" if context else "")).split())


def _apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(data))
    items = overrides.items() if isinstance(overrides, Mapping) else (split_override(o) for o in overrides)
    for key, value in items:
        _set_dotted(out, key, value)
    return out


def split_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. gate.lambda_high=1.5")
    return key.strip(), parse_yaml(raw, source=f"override {text!r}")


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        d = nxt
    d[leaf] = value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _diff(d: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping):
            sub = _diff(v, base[k])
            if sub:
                out[k] = sub
        elif base.get(k, object()) != v:
            out[k] = v
    return out


def _format_error(err: Mapping[str, Any]) -> str:
    # A key that is empty or holds control characters is shown quoted, so it stays visible and one line.
    loc = ".".join(str(p) if str(p).isprintable() and str(p).strip() == str(p) != "" else repr(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _section_at(err["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"{loc}: unknown key (valid keys here: {valid})"
    if err["type"] == "finite_number":
        msg = f"must be a finite number, got {err['input']!r}"
    elif err["type"].endswith("_type") or err["type"] in ("literal_error", "bool_parsing"):
        shown = repr(err["input"])
        msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    # Model-level validators carry the field in their message already.
    return f"{loc}: {msg}" if loc else msg


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
