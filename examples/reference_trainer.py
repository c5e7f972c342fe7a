"""A small CLIP trainer that takes part in ``curate bootstrap`` (SCAN dynamic pruning), resumable.

Each round (``curate.trainer.train_rounds``, ``curate/trainer/reference.py``):
  1. ``bootstrap_round(run, N)``     → RUN/manifests/round-NNNN.parquet (what to train on)
  2. one epoch over that manifest     (webdataset + ManifestFilter: pruned samples are never decoded)
  3. record per-sample losses         (LossRecorder → RUN/losses/round-NNNN/part-00000.parquet)
  4. save the optimizer state and the weights (RUN/checkpoints/round-NNNN.*), go to N+1

Usage (after embedding the shards into a run, so curate knows the pool):

    curate embed 'shards/sample/train/*.tar' --run runs/ref --model sample
    python examples/reference_trainer.py --run runs/ref --rounds 8 --warmup-rounds 1

``--rounds`` is the run's number of rounds. Interrupted (Ctrl-C, a killed job), the same command again
resumes after the last finished round, from its checkpoint (an interrupted round is trained again from its
start); ``--start N`` picks the round to start from. Each round prints one line on stdout; inside a round a
progress line goes to stderr every ``--progress-every`` seconds.
"""

from __future__ import annotations

import argparse
import sys

from curate import logs
from curate.errors import CurateError
from curate.trainer.reference import RoundLog, RoundProgress, TrainConfig, check_start, resume_round, train_rounds


def _done(last: int) -> str:
    return "no round is done" if last < 0 else "round 0 is done" if last == 0 else f"rounds 0-{last} are done"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (embedded with 'curate embed')")
    p.add_argument("--rounds", type=int, default=8, help="rounds (epochs) of the run, resumed rounds included")
    p.add_argument("--start", type=int, default=None,
                   help="round to start from (default: after the last finished round)")
    p.add_argument("--model", default="sample", help="curate/open_clip model name")
    p.add_argument("--pretrained", default=None, help="checkpoint to start from")
    p.add_argument("--method", default="scan", help="scan, infobatch or none")
    p.add_argument("--warmup-rounds", type=int, default=None, help="fix SCAN's warm-up length")
    p.add_argument("--t-cos", type=int, default=None, help="SCAN mutation rounds per cycle")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                   help="a progress line inside a round every SECONDS (default 30)")
    p.add_argument("--progress-batches", type=int, default=None, metavar="K",
                   help="also a progress line every K batches")
    args = p.parse_args(argv)
    with logs.one_line_logs():  # curate's warnings as one-line 'warning: ...' messages on stderr
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    knobs = {"warmup_rounds": args.warmup_rounds, "t_cos": args.t_cos} if args.method == "scan" else {}
    done: list[int] = []

    def on_round(log: RoundLog) -> None:
        done.append(log.round)
        print(f"round {log.round}: {log.phase:<8} kept {log.kept}/{log.summary['pool']}  steps {log.steps}  "
              f"loss {log.mean_loss:.4f}  ({log.seconds:.1f}s)", flush=True)

    try:
        start = resume_round(args.run) if args.start is None else args.start
        check_start(args.run, start)
        if start >= args.rounds:
            print(f"all {args.rounds} rounds of {args.run} are done", file=sys.stderr)
            return 0
        if start > 0:
            print(f"resuming {args.run} at round {start} ({_done(start - 1)})", file=sys.stderr)
        cfg = TrainConfig(run=args.run, rounds=args.rounds - start, start=start, model=args.model,
                          pretrained=args.pretrained, method=args.method, knobs=knobs, seed=args.seed,
                          batch_size=args.batch_size, lr=args.lr)
        progress = RoundProgress(lambda line: print(line, file=sys.stderr, flush=True), args.progress_every,
                                 args.progress_batches)
        train_rounds(cfg, progress, on_round=on_round)
    except CurateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        last = done[-1] if done else resume_round(args.run) - 1
        print(f"interrupted: {_done(last)}; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
