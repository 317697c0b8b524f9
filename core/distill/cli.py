"""Command line: ``distill train|sample|eval|bench|plugins|demo``.

User errors (:class:`distill.errors.DistillError`) print one clear sentence and
exit with code 2, without a traceback. ``DISTILL_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from distill.errors import DistillError


def _quiet_lightning() -> None:
    import logging

    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO on import; override after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def cmd_train(args: argparse.Namespace) -> int:
    from distill.config import load_config
    from distill.engine.run import train
    from distill.report import evaluate_run

    cfg = load_config(args.config, args.overrides)
    run = train(cfg, resume=args.resume)
    if run.trainer.is_global_zero and not args.no_eval:
        evaluate_run(run.run_dir)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from distill.engine.io import atomic_write
    from distill.engine.run import open_run
    from distill.evaluation import generate, noise_and_cond, student_sample_fn

    run = open_run(args.run, ema=None if args.ema is None else args.ema, load_teacher_too=False)
    steps = args.steps or run.cfg.student.steps
    noise, cond = noise_and_cond(run.modality, args.n, args.seed)
    out = Path(args.out or run.run_dir / "samples" / f"student_{steps}step")
    gen = generate(student_sample_fn(run.method, run.student, steps, args.seed), noise, cond, batch_size=args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"samples": gen.samples.contiguous()}
    if isinstance(cond, torch.Tensor):
        tensors["cond"] = cond.contiguous()
    atomic_write(out / "samples.safetensors", lambda tmp: save_file(tensors, tmp))
    files = run.modality.save_samples(run.modality.decode(gen.samples), out / "samples.png", title=f"student, {steps} step(s)")
    print(f"wrote {args.n} samples ({gen.nfe} NFE, {gen.ms_per_sample:.3f} ms/sample) to {out}: "
          + ", ".join(str(f) for f in [out / "samples.safetensors", *files]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from distill.report import evaluate_run

    evaluate_run(Path(args.run), n=args.n, steps=args.steps)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from distill.plugins import format_table, get_manager

    info = get_manager().describe()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_table(info))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from distill.bench import run_bench

    run_bench(args.modality, quick=args.quick, out=args.out, device=args.device, methods=args.methods,
              markdown=args.markdown, merge=args.merge, overrides=args.set, workdir=args.workdir, reuse=args.reuse)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from distill.demo import run_demo

    run_demo(minutes=args.minutes, device=args.device, out=args.out, modality=args.modality)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distil many-step diffusion/flow teachers into few-step students.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config (plus key=value overrides)")
    p.add_argument("config", help="YAML run file, e.g. configs/toy/dmd2.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=200")
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir from checkpoints/last.ckpt")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation and report after training")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("sample", help="generate samples with a trained student")
    p.add_argument("run", help="run directory written by `distill train`")
    p.add_argument("--steps", type=int, default=None, help="student steps (default: the steps it was trained for)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/student_<steps>step)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ema", dest="ema", action="store_true", default=None, help="use the EMA student (default when present)")
    group.add_argument("--no-ema", dest="ema", action="store_false")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a run's student against its teacher and write report.md")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=None, help="samples per setting (default: eval.n_samples)")
    p.add_argument("--steps", type=int, nargs="*", default=None, help="student step counts (default: eval.steps)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("plugins", help="list plugins and what they register")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plugins)

    p = sub.add_parser("bench", help="benchmark every method registered for a modality")
    p.add_argument("modality")
    p.add_argument("--quick", action="store_true", help="short budgets: the whole run fits in minutes on a CPU")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--methods", nargs="*", default=None, help="only these methods (with no names: the teacher rows only)")
    p.add_argument("--markdown", default=None, help="also write the rows as a Markdown table here")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of methods not run here from --out (same protocol): run a long "
                        "benchmark a few --methods at a time, or in parallel processes")
    p.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. modality_args.dataset=ring8_unequal")
    p.add_argument("--workdir", default=None,
                   help="train the students in this folder (default: a new temporary folder)")
    p.add_argument("--reuse", action="store_true",
                   help="load a student from --workdir when a finished run of the same config is there, "
                        "instead of retraining it (re-score students after a change in scoring)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("demo", help="distil the bundled teacher into a one-step student and write a report")
    p.add_argument("--minutes", type=float, default=None, help="distillation budget")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="run directory (default: runs/demo)")
    p.add_argument("--modality", default=None, help="demo of this modality (default: image if installed, else toy)")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after flags (`distill train c.yaml --resume a.b=1`).
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _quiet_lightning()
    try:
        return args.fn(args)
    except DistillError as error:
        if os.environ.get("DISTILL_DEBUG"):
            raise
        print(f"distill: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
