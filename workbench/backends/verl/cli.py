"""The verl backend's verbs; ``workbench.cli`` calls ``add_verbs(subparsers)``.

Handlers import what they need inside, so ``workbench --help`` imports neither verl nor
torch. Verbs:

- ``verl-overrides --run ID [--scale paper]``: the complete verl Hydra override list.
- ``verl-check [--scale paper] [--run ID ...]``: compose and validate verl's full config
  for every grid run (CPU only, nothing downloaded); one line per run; exit 1 on failure.
- ``verl-launch --run ID [--scale paper] [--dry-run]``: run it (MLflow child run, verl job,
  HF export); ``--dry-run`` prints the commands.
- ``realscale-eval MODEL``: AIME24 / AIME25 / HMMT25-Feb / HMMT25-Nov with vLLM (or
  transformers), math-verify grading, per-sample results, avg@k and pass@k.
- ``realscale-data``: a math dataset (hub id or local file) as verl RL parquet.
- ``verl-stage [--scale paper] --from DIR``: every data file the scale names, from local files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RUNS_DIR = "experiments/runs"


def _scale(args):
    """The verl scale of ``--scale`` / ``--scale-set``; a mistake in either is a ``UserError``."""
    import yaml
    from pydantic import ValidationError

    from workbench.backends.verl.overrides import load_scale
    from workbench.errors import UserError

    try:
        return load_scale(args.scale, args.scale_set)
    except UserError:
        raise
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise UserError(f"--scale {args.scale}: {fields}") from None
    except (ValueError, OSError, yaml.YAMLError) as e:
        raise UserError(f"--scale {args.scale}: {' '.join(str(e).split())}") from None


def _run_config(args):
    from workbench.config import load_config

    path = Path(args.run)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        path = Path(args.runs_dir) / f"{args.run}.yaml"
        if not path.is_file():
            from workbench.registry import UnknownNameError

            valid = ", ".join(sorted(p.stem for p in Path(args.runs_dir).glob("*.yaml"))) or f"none in {args.runs_dir}"
            raise UnknownNameError(f"--run {args.run!r}: no run config {path}; valid run ids: {valid}")
    return load_config(path, args.set)


def _overrides(args: argparse.Namespace) -> int:
    from workbench.backends.verl.overrides import build_job

    job = build_job(_run_config(args), _scale(args), seed=args.seed, experiment=args.experiment, results=args.results)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "run": job.run_id,
                    "kind": job.kind,
                    "module": job.module,
                    "gpus": job.gpus,
                    "nodes": job.nodes,
                    "run_dir": job.run_dir,
                    "env": job.env,
                    "teacher_data": job.teacher_data,
                    "overrides": job.overrides,
                },
                indent=1,
            )
        )
    elif args.format == "shell":
        print(job.shell())
    else:
        print("\n".join(job.overrides))
    return 0


def _check(args: argparse.Namespace) -> int:
    import logging
    import os

    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    logging.getLogger("verl").setLevel(logging.ERROR)
    from workbench.backends.verl.check import check_grid

    results = check_grid(_scale(args), args.runs_dir, args.run or None, seed=args.seed, results=args.results)
    for r in results:
        print(r.line(), flush=True)
    n_bad = sum(not r.ok for r in results)
    print(f"{len(results) - n_bad}/{len(results)} runs valid for verl at scale {args.scale}")
    return 1 if n_bad else 0


def _launch(args: argparse.Namespace) -> int:
    from workbench.backends.verl import launch
    from workbench.backends.verl.overrides import build_job
    from workbench.backends.verl.stage import prepare_launch

    cfg = _run_config(args)
    job = build_job(cfg, _scale(args), seed=args.seed, experiment=args.experiment, results=args.results)
    job = prepare_launch(job, dry_run=args.dry_run)  # inputs and CUDA torch checked before any compute
    run_id = uri = None
    if not args.dry_run:
        run_id, uri = launch.ensure_mlflow_run(
            job, cfg, experiment=args.experiment, parent_run_id=args.parent_run_id, tracking_uri=args.tracking_uri
        )
    elif args.mlflow_run_id:
        run_id, uri = args.mlflow_run_id, args.tracking_uri
    return launch.run(launch.plan(job, mlflow_run_id=run_id, tracking_uri=uri), dry_run=args.dry_run)


def _parse_sources(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, src = item.partition("=")
        if not sep or not name:
            from workbench.errors import UserError

            raise UserError(f"--source {item!r}: expected NAME=PATH_OR_HUB_ID")
        out[name] = src
    return out


def _realscale_eval(args: argparse.Namespace) -> int:
    from workbench.backends.verl import realscale as R

    sources = _parse_sources(args.source)
    grid = _eval_grid(args)
    if args.mlflow_run_file:  # the run's verl_run.json (verl-launch wrote it): read before hours of evaluation
        if not Path(args.mlflow_run_file).is_file():
            from workbench.errors import UserError

            raise UserError(
                f"--mlflow-run-file {args.mlflow_run_file}: no such file (verl-launch writes it "
                "when the run starts: was this run trained with the same --results and --scale?)"
            )
        state = json.loads(Path(args.mlflow_run_file).read_text())
        args.mlflow_run_id, args.tracking_uri = state["run_id"], args.tracking_uri or state["tracking_uri"]
    names = args.benchmark or list(R.BENCHMARKS)
    unknown = [b for b in names if b not in R.BENCHMARKS]
    if unknown:
        from workbench.errors import UserError

        raise UserError(f"unknown benchmark(s) {unknown}; valid: {', '.join(R.BENCHMARKS)}")
    if args.k > args.n_samples:
        from workbench.errors import UserError

        raise UserError(f"--k ({args.k}) must be <= --n-samples ({args.n_samples})")
    from workbench.cli import _output

    _output(args.out, "--out", directory=True)
    benches = {b: (R.BENCHMARKS[b], R.load_benchmark(b, sources.get(b), limit=args.limit)) for b in names}
    engine = R.make_engine(
        args.engine,
        args.model,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        batch_size=args.batch_size,
        chat_template=not args.no_chat_template,
    )
    result = R.evaluate(
        engine,
        benches,
        n_samples=args.n_samples,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        out_dir=args.out,
        grade_workers=args.grade_workers,
        grade_timeout=args.grade_timeout,
        label=args.label or args.model,
    )
    for b, r in result["benchmarks"].items():
        print(f"{b:12s} avg@{args.k} {100 * r['avg_at_k']:6.2f}  pass@{args.k} {100 * r['pass_at_k']:6.2f}")
    print(f"{'AVG':12s} avg@{args.k} {100 * result['avg_at_k']:6.2f}  pass@{args.k} {100 * result['pass_at_k']:6.2f}")
    if args.mlflow_run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(args.tracking_uri) if args.tracking_uri else MlflowClient()
        for key, value in result["metrics"].items():
            client.log_metric(args.mlflow_run_id, key, value, step=args.step)
    if grid:  # an evaluation-only model: its own child run of the grid, as `workbench eval --grid` logs it
        from workbench.grid import log_eval_run

        ev = {k: result[k] for k in ("n_samples", "k", "temperature", "top_p", "max_new_tokens")}
        log_eval_run(
            Path(args.out) / "mlflow",
            grid,
            label=args.label,
            seed=args.seed,
            backend="verl",
            metrics=result["metrics"],
            result=result,
            tracking_uri=args.tracking_uri,
            config={"eval": {**ev, "benchmarks": names}, "model": args.model},
        )
    return 0


def _eval_grid(args: argparse.Namespace) -> dict:
    """``--grid``'s experiment and parent run (``{}`` without it), checked before any evaluation."""
    if not args.grid:
        return {}
    from workbench.errors import UserError

    if not args.label:
        raise UserError("--grid needs --label NAME: the evaluation's run in the grid (e.g. teacher, student-init)")
    if args.mlflow_run_file or args.mlflow_run_id:
        raise UserError("--grid logs a run of its own; leave out --mlflow-run-file / --mlflow-run-id")
    from workbench.backends.verl.launch import check_tracking_store
    from workbench.grid import read_grid
    from workbench.tracking import default_tracking_uri

    check_tracking_store(args.tracking_uri or default_tracking_uri())
    return read_grid(args.grid)


def _stage(args: argparse.Namespace) -> int:
    from workbench.backends.verl import stage

    items = stage.plan(_scale(args), args.from_dir, _parse_sources(args.source))
    command = f"workbench verl-stage --scale {args.scale} --from {args.from_dir}"
    for line in stage.stage(items, limit=args.limit, command=command):
        print(line)
    return 0


def _realscale_data(args: argparse.Namespace) -> int:
    from workbench.backends.verl import realscale as R

    spec = R.BENCHMARKS.get(args.dataset) or R.BenchmarkSpec(
        args.dataset, args.dataset, split=args.split, answer_format=args.answer_format, template=args.template
    )
    problems = R.load_benchmark(spec, args.source, limit=args.limit)
    out = R.write_parquet(R.to_verl_rows(problems, args.data_source or spec.name, answer_format=spec.answer_format), args.out)
    print(f"{len(problems)} prompts -> {out}")
    return 0


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the verl backend's verbs to ``workbench``'s subparsers."""
    from workbench.cli import _fraction, _nonneg_int, _positive_float, _positive_int, _seed

    def scale_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scale", default="paper", help="scale name (scales/*.yaml) or YAML path (default: %(default)s)")
        p.add_argument(
            "--scale-set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a scale field, e.g. --scale-set cluster.gpus_per_node=8 (repeatable)",
        )
        p.add_argument("--runs-dir", default=RUNS_DIR, help="grid run configs (default: %(default)s)")
        p.add_argument(
            "--results",
            default="results",
            help="results root: a run's files go to RESULTS/SCALE/verl-runs/RUN/seedN (default: %(default)s)",
        )
        p.add_argument("--seed", type=_seed, default=None, help="seed (default: the run config's)")

    p = verbs.add_parser(
        "verl-overrides",
        help="print the verl Hydra overrides of a grid run",
        description="Print the complete verl 0.9 Hydra override list of one grid run at a "
        "scale (one per line), or the full command (--format shell) or job (--format json).",
    )
    p.add_argument("--run", required=True, help="run id (experiments/runs/ID.yaml) or a run config path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run config field")
    p.add_argument("--experiment", default="sgopd-verl", help="MLflow experiment (default: %(default)s)")
    p.add_argument("--format", choices=("lines", "shell", "json"), default="lines")
    scale_args(p)
    p.set_defaults(handler=_overrides)

    p = verbs.add_parser(
        "verl-check",
        help="compose and validate verl's config for every grid run (CPU)",
        description="Compose verl's full Hydra config for each grid run with its overrides, "
        "run verl's validation and instantiate its config dataclasses, on CPU without "
        "downloading anything. One line per run; exit status 1 if any run fails.",
    )
    p.add_argument("--run", action="append", default=[], help="check only this run id (repeatable)")
    scale_args(p)
    p.set_defaults(handler=_check)

    p = verbs.add_parser(
        "verl-launch",
        help="run one grid run as a verl job (GPU cluster)",
        description="Create (or resume) the run's MLflow child run, then run the verl job "
        "with the run's overrides and export the final model. --dry-run prints the commands.",
    )
    p.add_argument("--run", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--experiment", default="sgopd-verl")
    p.add_argument("--parent-run-id", default=None, help="MLflow parent run (the grid's run)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the repo's)")
    p.add_argument("--mlflow-run-id", default=None, help="with --dry-run: show the commands for this MLflow run")
    p.add_argument("--dry-run", action="store_true")
    scale_args(p)
    p.set_defaults(handler=_launch)

    p = verbs.add_parser(
        "realscale-eval",
        help="evaluate a model on AIME24/25 and HMMT25 (vLLM or transformers)",
        description="Sample n responses per problem, grade them with math-verify (process pool, "
        "hard per-answer timeout), write per-sample results and avg@k / pass@k.",
    )
    p.add_argument("model", help="model directory or hub id")
    p.add_argument("--out", required=True, help="output directory (results.json, <benchmark>.samples.jsonl)")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    p.add_argument("--benchmark", action="append", default=[], help="benchmark name (repeatable; default: all four)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=PATH_OR_HUB_ID",
        help="where a benchmark's data is: a local parquet/JSONL file or a hub id",
    )
    p.add_argument("--n-samples", type=_positive_int, default=32)
    p.add_argument("--k", type=_positive_int, default=32)
    p.add_argument("--temperature", type=_positive_float, default=0.6)
    p.add_argument("--top-p", type=_fraction, default=0.95)
    p.add_argument("--max-new-tokens", type=_positive_int, default=32768)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--limit", type=_positive_int, default=None, help="first N problems of each benchmark")
    p.add_argument("--tensor-parallel-size", type=_positive_int, default=1)
    p.add_argument("--max-model-len", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=64, help="transformers engine batch size")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--grade-workers", type=_positive_int, default=None)
    p.add_argument("--grade-timeout", type=_positive_float, default=10.0, help="seconds per answer (default: %(default)s)")
    p.add_argument("--label", default=None)
    p.add_argument("--mlflow-run-id", default=None, help="log eval/* metrics into this MLflow run")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--mlflow-run-file", default=None, help="a run's verl_run.json: log into that MLflow run")
    p.add_argument("--step", type=_nonneg_int, default=0, help="MLflow step of the eval metrics")
    p.add_argument(
        "--grid",
        default=None,
        help="grid file of `workbench grid-start`: log the evaluation as the "
        "grid's child run tagged run=LABEL, seed=SEED, workbench.kind=eval (student-init, teacher, ...)",
    )
    p.set_defaults(handler=_realscale_eval)

    p = verbs.add_parser(
        "verl-stage",
        help="stage a scale's training, validation and benchmark files from local data",
        description="Write every data file the scale names (data.sources, data.val_files: verl RL "
        "parquet; eval.benchmarks: id/problem/answer parquet) from local parquet/JSON/JSONL files "
        "or folders, one folder per set under --from (the set: the staged file's folder name, or "
        "its stem where files share a folder). Nothing is downloaded. See docs/verl.md.",
    )
    p.add_argument("--from", dest="from_dir", default="data/raw", help="the offline layout (default: %(default)s)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SET=PATH",
        help="a set's file or folder elsewhere than FROM/SET (repeatable)",
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="first N problems of each set")
    scale_args(p)
    p.set_defaults(handler=_stage)

    p = verbs.add_parser(
        "realscale-data",
        help="write a math dataset as verl RL parquet",
        description="Load a dataset with `datasets` (hub id or local parquet/JSONL) and write "
        "verl's RL parquet (chat prompt, ground truth) for training or validation.",
    )
    p.add_argument("dataset", help="a benchmark name or a dataset id")
    p.add_argument("--out", required=True)
    p.add_argument("--source", default=None, help="local file or hub id (default: the dataset id)")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--data-source", default=None, help="verl data_source column (default: the dataset name)")
    p.add_argument("--answer-format", choices=("boxed", "hash"), default="boxed")
    p.add_argument(
        "--template", default="{problem}\n" + "Please reason step by step, and put your final answer within \\boxed{}."
    )
    p.set_defaults(handler=_realscale_data)


def main(argv=None) -> int:
    """Stand-alone entry (``python -m workbench.backends.verl.cli VERB ...``) until ``workbench.cli`` adds the verbs."""
    parser = argparse.ArgumentParser(prog="workbench")
    add_verbs(parser.add_subparsers(dest="verb", metavar="VERB", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
