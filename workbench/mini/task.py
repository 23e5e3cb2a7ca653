"""Synthetic verifiable math task of the miniature world: integer arithmetic with worked steps.

A problem is an expression over positive integers with ``+ - *`` and the usual precedence,
ending in ``=``; the response rewrites the expression one operation at a time (a worked
step ends with ``;``) and gives the final answer after the marker ``#`` (the analogue of
``\\boxed{}``)::

    prompt    37+4*6-5=
    response  37+24-5;61-5;56;#56

Why this shape (see docs/mini-world.md): every step is a small local computation, so a tiny
model can learn it, but a 5-operator chain needs 4 correct rewrites plus the answer, so
early slips compound (exposure bias); the last rewrite state is always explicit, so a
teacher can score a student's step given the student's own (possibly wrong) history.

Solutions have a *style* (:class:`Style`). The teacher's canonical style reduces the
leftmost pending multiplication first, one operation per step, and in some steps first
writes a wrong digit, retracts it with ``!`` and redoes the step (the wrong digit masked
from its loss: it learns to notice a slip and fix it, never to slip)::

    response  37+24-5;62!61-5;56;#56

The student's "pre-training" style uses the same format, retracts rarely, and in a few
solutions reduces the rightmost multiplication first (equally correct: the verifier is
indifferent, the teacher is not, a source of conflict tokens). Older knobs (``skip``:
two-operation shortcuts; ``noise``: unretracted slips) stay for world designs that use them.

Everything is deterministic from a seed (``random.Random`` seeded with a string, which is
stable across processes and Python versions).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

OPS = ("+", "-", "*")
ANSWER_MARK = "#"
STEP_END = ";"
RETRACT = "!"  # "the step just written is wrong": the next step redoes it from the same state
PROMPT_END = "="
#: Default bound on every value (operands and intermediate results, rejection sampling):
#: no signs and at most two digits, so that every step is small arithmetic a tiny model
#: learns in minutes (three-digit values took far longer: docs/mini-world.md).
MAX_VALUE = 99
#: Bound of the "large" levels (harder: rarer in training, three-digit values).
LARGE_VALUE = 199


# --------------------------------------------------------------------------------------
# problems


@dataclass(frozen=True)
class Problem:
    """One task instance. ``prompt`` ends with ``=``; ``solution`` is the teacher-style
    reference response (without EOS)."""

    id: str
    source: str
    prompt: str
    answer: int
    n_ops: int
    solution: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Problem:
        return cls(**{k: d[k] for k in ("id", "source", "prompt", "answer", "n_ops", "solution")})


def parse_expression(prompt: str) -> tuple[list[int], list[str]]:
    """``"37+42*6="`` -> ``([37, 42, 6], ["+", "*"])``. Raises ``ValueError`` if malformed."""
    body = prompt[:-1] if prompt.endswith(PROMPT_END) else prompt
    nums: list[int] = []
    ops: list[str] = []
    cur = ""
    for c in body:
        if c.isdigit():
            cur += c
        elif c in OPS and cur:
            nums.append(int(cur))
            ops.append(c)
            cur = ""
        else:
            raise ValueError(f"malformed expression {prompt!r}")
    if not cur:
        raise ValueError(f"malformed expression {prompt!r}")
    nums.append(int(cur))
    return nums, ops


def render(nums: Sequence[int], ops: Sequence[str]) -> str:
    out = [str(nums[0])]
    for o, n in zip(ops, nums[1:]):
        out.append(o)
        out.append(str(n))
    return "".join(out)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _pick(ops: Sequence[str], order: str) -> int:
    """Index of the operation to reduce next: pending multiplications first (leftmost for
    ``order="left"``, rightmost for ``"right"``), then ``+``/``-`` strictly left to right
    (the only correct order for them)."""
    if "*" in ops:
        if order == "left":
            return ops.index("*")
        return len(ops) - 1 - ops[::-1].index("*")
    return 0


def reduce_once(nums: list[int], ops: list[str], order: str = "left") -> tuple[list[int], list[str]]:
    """Evaluate one operation respecting precedence (see :func:`_pick`)."""
    i = _pick(ops, order)
    v = _apply(nums[i], ops[i], nums[i + 1])
    return nums[:i] + [v] + nums[i + 2 :], ops[:i] + ops[i + 1 :]


def trajectory(nums: Sequence[int], ops: Sequence[str], order: str = "left") -> list[list[int]]:
    """Values after each reduction (list of number lists; the last one has length 1)."""
    n, o = list(nums), list(ops)
    states = []
    while o:
        n, o = reduce_once(n, o, order)
        states.append(n)
    return states


def solve(
    prompt: str,
    order: str = "left",
    noise: float = 0.0,
    rng: random.Random | None = None,
    skip: float = 0.0,
    retract: float = 0.0,
) -> str:
    """Worked-step response for ``prompt`` (the exact reference when ``noise = skip =
    retract = 0``); style knobs: :func:`solve_masked`."""
    return solve_masked(prompt, order, noise, rng, skip, retract)[0]


def solve_masked(
    prompt: str,
    order: str = "left",
    noise: float = 0.0,
    rng: random.Random | None = None,
    skip: float = 0.0,
    retract: float = 0.0,
) -> tuple[str, list[bool]]:
    """Worked-step response and its loss mask (``mask[i]``: train on character ``i``).

    Every reduction is a step ending in ``;`` (the last one writes the final value), and the
    answer copies it after ``#``: ``37+24-5;61-5;56;#56``. Style knobs (SFT data of the
    world's models; need ``rng``):

    * ``skip``: each written step, with this probability, merges the next reduction too
      (a shortcut: two operations in one step, harder to get right for a small model);
    * ``noise``: each reduction, with this probability, writes a slightly wrong value (off
      by a small amount, never negative) and the chain continues consistently from it,
      like a sloppy but self-consistent solver;
    * ``retract``: each step, with this probability, first slips: it is written up to one
      wrong digit (usually in the value just computed), retracted at once with ``!``, and
      written again in full from the same state: ``37+24-5;62!61-5;``. The wrong digit is
      masked out of the loss, so a model trained on this learns to notice a digit that
      is not the one it would have written and to redo the step, never to slip.
    """
    nums, ops = parse_expression(prompt)
    steps: list[tuple[list[int], list[str], int]] = []  # state after the step, index of its new value
    while ops:
        n_reductions = 2 if (skip > 0.0 and rng is not None and len(ops) >= 2 and rng.random() < skip) else 1
        for _ in range(n_reductions):
            i = _pick(ops, order)
            nums, ops = reduce_once(nums, ops, order)
            if noise > 0.0 and rng is not None and rng.random() < noise:
                nums[i] = max(0, nums[i] + rng.choice((-10, -2, -1, 1, 2, 10)))
        steps.append((list(nums), list(ops), i))
    text: list[str] = []
    mask: list[bool] = []
    for n, o, i in steps:
        step = render(n, o) + STEP_END
        if retract > 0.0 and rng is not None and rng.random() < retract:
            at, wrong = _slip(n, i, rng)
            text += [step[:at], wrong, RETRACT]
            mask += [True] * at + [False, True]
        text.append(step)
        mask += [True] * len(step)
    answer = ANSWER_MARK + str(nums[0])
    return "".join(text) + answer, mask + [True] * len(answer)


def _slip(nums: list[int], i: int, rng: random.Random) -> tuple[int, str]:
    """Where a slip goes in the step ``render(nums, ops)`` and the wrong digit written there:
    a digit of the value just computed (index ``i``) in 3 of 4 cases, else of another,
    copied number; never a leading zero."""
    j = i if len(nums) == 1 or rng.random() < 0.75 else rng.choice([k for k in range(len(nums)) if k != i])
    start = sum(len(str(v)) + 1 for v in nums[:j])  # each earlier number and its operator
    digits = str(nums[j])
    d = rng.randrange(len(digits))
    choices = [c for c in "0123456789" if c != digits[d] and not (c == "0" and d == 0 and len(digits) > 1)]
    return start + d, rng.choice(choices)


@dataclass(frozen=True)
class Style:
    """How a solver writes its solutions (what a model's SFT data looks like).

    ``order_p``: probability that a solution uses ``order`` (else the canonical ``"left"``);
    ``skip`` / ``noise`` / ``retract``: see :func:`solve_masked`. The default is the canonical
    reference solution.
    """

    order: str = "left"
    order_p: float = 1.0
    skip: float = 0.0
    noise: float = 0.0
    retract: float = 0.0

    def render(self, problem: Problem, rng: random.Random) -> str:
        return self.render_masked(problem, rng)[0]

    def render_masked(self, problem: Problem, rng: random.Random) -> tuple[str, list[bool]]:
        """A solution in this style and its loss mask (see :func:`solve_masked`)."""
        if self.order == "left" and self.skip == 0.0 and self.noise == 0.0 and self.retract == 0.0:
            return problem.solution, [True] * len(problem.solution)
        order = self.order if rng.random() < self.order_p else "left"
        return solve_masked(problem.prompt, order, self.noise, rng, self.skip, self.retract)


def evaluate(prompt: str) -> int:
    nums, ops = parse_expression(prompt)
    return trajectory(nums, ops)[-1][0] if ops else nums[0]


# --------------------------------------------------------------------------------------
# verifier


def extract_answer(response_text: str) -> str | None:
    """Text after the (single) answer marker, or ``None`` when there is no marker."""
    i = response_text.find(ANSWER_MARK)
    if i < 0:
        return None
    return response_text[i + 1 :].strip()


def verify(problem: Problem | Mapping | int, response_text: str) -> bool:
    """Binary reward: True iff the response has exactly one ``#`` followed by exactly the
    correct integer (and nothing else). ``problem`` is a :class:`Problem`, a dict with an
    ``answer`` key, or the answer itself. Worked steps are not checked (outcome reward)."""
    if isinstance(problem, Problem):
        answer = problem.answer
    elif isinstance(problem, Mapping):
        answer = problem["answer"]
    else:
        answer = problem
    got = extract_answer(response_text)
    # isdigit() also rejects a second '#', signs, separators and the empty string
    return got is not None and got.isdigit() and len(got) < 8 and int(got) == int(answer)


# --------------------------------------------------------------------------------------
# difficulty levels, sources, splits


@dataclass(frozen=True)
class Level:
    """A difficulty level: number of operators, value bound, operator mix.

    Operands after a ``*`` are single digits (2..``mul_max``); other operands are drawn
    half from 1..9 and half from 10..``max_operand`` (uniform over 1..99 would make long
    chains that stay within ``max_value`` very rare). Every intermediate value, under
    either solution order, lies in [0, ``max_value``].
    """

    n_ops: int
    max_operand: int = 99
    mul_max: int = 9
    op_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)  # + - *
    max_value: int = MAX_VALUE


def sample_problem(rng: random.Random, level: Level, source: str, idx: int, max_tries: int = 100_000) -> Problem:
    """Rejection-sample an expression of ``level``."""

    def operand() -> int:
        if level.max_operand < 10 or rng.random() < 0.5:
            return rng.randint(1, min(9, level.max_operand))
        return rng.randint(10, level.max_operand)

    for _ in range(max_tries):
        nums = [operand()]
        ops: list[str] = []
        for _ in range(level.n_ops):
            op = rng.choices(OPS, weights=level.op_weights)[0]
            ops.append(op)
            nums.append(rng.randint(2, level.mul_max) if op == "*" else operand())
        if _in_range(nums, ops, level.max_value):
            prompt = render(nums, ops) + PROMPT_END
            ans = trajectory(nums, ops)[-1][0] if ops else nums[0]
            return Problem(
                id=f"{source}-{idx:05d}", source=source, prompt=prompt, answer=ans, n_ops=level.n_ops, solution=solve(prompt)
            )
    raise RuntimeError(f"could not sample a problem for {level}")


def _in_range(nums: list[int], ops: list[str], max_value: int) -> bool:
    if any(v > max_value for v in nums):
        return False
    for order in ("left", "right"):
        for state in trajectory(nums, ops, order):
            if any(v < 0 or v > max_value for v in state):
                return False
    return True


@dataclass(frozen=True)
class Source:
    """A training-prompt source: a mixture over difficulty levels."""

    name: str
    mixture: tuple[tuple[Level, float], ...]
    description: str = ""

    def sample(self, rng: random.Random, idx: int) -> Problem:
        levels, weights = zip(*self.mixture)
        level = rng.choices(levels, weights=weights)[0]
        return sample_problem(rng, level, self.name, idx)


@dataclass(frozen=True)
class Benchmark:
    """A held-out benchmark: ``size`` problems of one level (stand-in for a competition)."""

    name: str
    level: Level
    size: int
    stands_for: str
    op_profiles: tuple[tuple[float, float, float], ...] = ((0.4, 0.3, 0.3),)


# --------------------------------------------------------------------------------------
# the task


_MIXED = (0.4, 0.3, 0.3)  # source A: additive-heavy
_PRODUCTS = (0.3, 0.2, 0.5)  # source B: multiplication-heavy (more order choices)


@dataclass
class ArithTask:
    """The ``arith`` task family: two training sources, four benchmarks, one validation split.

    All splits are generated from ``seed``; training streams skip any prompt that appears
    in a benchmark or in the validation split, so evaluation prompts are never trained on.
    """

    seed: int = 0
    bench_size: int = 100
    val_size: int = 200
    name: str = "arith"
    sources: dict[str, Source] = field(default_factory=dict)
    benchmarks_spec: tuple[Benchmark, ...] = ()

    def __post_init__(self) -> None:
        if not self.sources:
            # Two levels of number size: "small" keeps every value <= 99, "large" allows up
            # to 199 (three-digit carries; rarer in training, hence harder for every model).
            def lv(n, big=False, **kw):
                return Level(n, max_value=LARGE_VALUE if big else MAX_VALUE, **kw)

            A = {"op_weights": _MIXED}
            B = {"max_operand": 50, "op_weights": _PRODUCTS}
            self.sources = {
                "A": Source(
                    "A",
                    (
                        (lv(1, **A), 0.08),
                        (lv(2, **A), 0.20),
                        (lv(3, **A), 0.22),
                        (lv(4, **A), 0.15),
                        (lv(5, **A), 0.10),
                        (lv(3, True, **A), 0.10),
                        (lv(4, True, **A), 0.08),
                        (lv(5, True, **A), 0.07),
                    ),
                    "operands 1-99, additive-heavy operator mix, 1-5 operators, values <= 99 (75%) or <= 199 (25%)",
                ),
                "B": Source(
                    "B",
                    (
                        (lv(2, **B), 0.20),
                        (lv(3, **B), 0.25),
                        (lv(4, **B), 0.15),
                        (lv(5, **B), 0.10),
                        (lv(3, True, **B), 0.10),
                        (lv(4, True, **B), 0.10),
                        (lv(5, True, **B), 0.10),
                    ),
                    "operands 1-50, multiplication-heavy operator mix, 2-5 operators, values <= 99 (70%) or <= 199 (30%)",
                ),
            }
        if not self.benchmarks_spec:
            # rising difficulty = longer chains, then larger numbers; each benchmark
            # alternates both operator profiles
            both = (_MIXED, _PRODUCTS)
            self.benchmarks_spec = (
                Benchmark("bench1", Level(2), self.bench_size, "AIME24", both),
                Benchmark("bench2", Level(3), self.bench_size, "AIME25", both),
                Benchmark("bench3", Level(4, max_value=LARGE_VALUE), self.bench_size, "HMMT25-Feb", both),
                Benchmark("bench4", Level(5, max_value=LARGE_VALUE), self.bench_size, "HMMT25-Nov", both),
            )
        self._held_out: frozenset[str] | None = None

    # ---- held-out splits ------------------------------------------------------------

    def benchmarks(self) -> dict[str, list[Problem]]:
        """``{name: problems}`` in rising difficulty; disjoint from each other and from
        validation (later splits skip earlier prompts)."""
        seen: set[str] = set()
        out = {}
        for b in self.benchmarks_spec:
            rng = random.Random(f"arith:{self.seed}:bench:{b.name}")
            probs: list[Problem] = []
            while len(probs) < b.size:
                w = b.op_profiles[len(probs) % len(b.op_profiles)]
                level = replace(b.level, op_weights=w)
                p = sample_problem(rng, level, b.name, len(probs))
                if p.prompt not in seen:
                    seen.add(p.prompt)
                    probs.append(p)
            out[b.name] = probs
        return out

    def validation(self) -> list[Problem]:
        """Validation split (hyper-parameter search): the four benchmark levels in turn,
        both operator profiles, disjoint from the benchmarks."""
        bench_prompts = {p.prompt for ps in self.benchmarks().values() for p in ps}
        rng = random.Random(f"arith:{self.seed}:validation")
        probs: list[Problem] = []
        while len(probs) < self.val_size:
            i = len(probs)
            spec = self.benchmarks_spec[i % len(self.benchmarks_spec)]
            level = replace(spec.level, op_weights=(_MIXED, _PRODUCTS)[(i // 4) % 2])
            p = sample_problem(rng, level, "val", i)
            if p.prompt not in bench_prompts and all(p.prompt != q.prompt for q in probs):
                probs.append(p)
        return probs

    def held_out_prompts(self) -> frozenset[str]:
        if self._held_out is None:
            s = {p.prompt for ps in self.benchmarks().values() for p in ps}
            s |= {p.prompt for p in self.validation()}
            self._held_out = frozenset(s)
        return self._held_out

    # ---- training data ----------------------------------------------------------------

    def stream(self, source: str | Sequence[str], stream_seed: str | int) -> Iterator[Problem]:
        """Endless deterministic stream of training problems (never a held-out prompt).

        ``source`` is a source name or a list of names (round-robin over them)."""
        names = [source] if isinstance(source, str) else list(source)
        for n in names:
            if n not in self.sources:
                raise KeyError(f"unknown source {n!r}; valid: {sorted(self.sources)}")
        held = self.held_out_prompts()
        rng = random.Random(f"arith:{self.seed}:stream:{'+'.join(names)}:{stream_seed}")
        i = 0
        while True:
            src = self.sources[names[i % len(names)]]
            p = src.sample(rng, i)
            i += 1
            if p.prompt not in held:
                yield p

    def train_pool(self, source: str, size: int) -> list[Problem]:
        """The fixed RL training-prompt pool of one source (unique prompts)."""
        seen: set[str] = set()
        out: list[Problem] = []
        for p in self.stream(source, "pool"):
            if p.prompt not in seen:
                seen.add(p.prompt)
                out.append(Problem(f"{source}-{len(out):05d}", p.source, p.prompt, p.answer, p.n_ops, p.solution))
            if len(out) == size:
                return out
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# registry and I/O

TASKS: dict[str, Callable[..., ArithTask]] = {"arith": ArithTask}


def get_task(name: str, **kwargs) -> ArithTask:
    """Instantiate a registered task; unknown names raise ``KeyError`` listing valid ones."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown mini task {name!r}; valid: {sorted(TASKS)}") from None
    return factory(**kwargs)


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(p.to_dict()) + "\n" for p in problems)


def read_jsonl(path: str | Path) -> list[Problem]:
    with open(path) as f:
        return [Problem.from_dict(json.loads(line)) for line in f if line.strip()]
