"""A small, readable CLIP trainer that takes part in ``curate bootstrap`` (SCAN dynamic pruning).

Each round:
  1. ``curate bootstrap --round N``  → RUN/manifests/round-NNNN.parquet (what to train on)
  2. one epoch over that manifest     (webdataset + ManifestFilter: pruned samples are never decoded)
  3. record per-sample losses         (LossRecorder → RUN/losses/round-NNNN/part-00000.parquet)
  4. save a checkpoint, go to N+1

Usage (after embedding the shards into a run, so curate knows the pool):

    curate embed 'shards/sample/train/*.tar' --run runs/ref --model sample
    python examples/reference_trainer.py --run runs/ref --rounds 8 --warmup-rounds 1

The same loop, with options for the demo and benchmarks, is ``curate.trainer.train_rounds``.
"""

from __future__ import annotations

import argparse
import random

import torch
import webdataset as wds

from curate.bootstrap import bootstrap_round
from curate.models import load_model
from curate.trainer import DecodePairs, LossRecorder, ManifestFilter, TarSamples, clip_loss_per_sample, shard_urls


def collate(samples):
    images, texts, uids, weights = zip(*samples, strict=True)
    return torch.stack(images), list(texts), list(uids), torch.tensor(weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (embedded with 'curate embed')")
    p.add_argument("--rounds", type=int, default=8, help="rounds (epochs) to train")
    p.add_argument("--model", default="sample", help="curate/open_clip model name")
    p.add_argument("--pretrained", default=None, help="checkpoint to start from")
    p.add_argument("--method", default="scan", help="scan, infobatch or none")
    p.add_argument("--warmup-rounds", type=int, default=None, help="fix SCAN's warm-up length")
    p.add_argument("--t-cos", type=int, default=None, help="SCAN mutation rounds per cycle")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    clip = load_model(args.model, args.pretrained, device="cpu", precision="fp32")
    model, tokenizer = clip.model, clip.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    knobs = {"warmup_rounds": args.warmup_rounds, "t_cos": args.t_cos} if args.method == "scan" else {}

    for round_ in range(args.rounds):
        # 1. ask curate what to train on this round (knobs are fixed at round 0)
        res = bootstrap_round(args.run, round_, method=args.method if round_ == 0 else None,
                              knobs=knobs if round_ == 0 else {}, seed=args.seed if round_ == 0 else None)
        urls = shard_urls(res.manifest, run=args.run)

        # 2. one epoch over the manifest: filter on (shard, key) right after reading the tar
        data = wds.DataPipeline(
            wds.SimpleShardList(urls, seed=args.seed + round_),
            TarSamples(),  # or wds.tarfile_to_samples(): the same samples, at more CPU per sample
            ManifestFilter(res.manifest_path),
            wds.shuffle(1000, rng=random.Random(args.seed + round_)),
            DecodePairs(clip.preprocess),  # image + caption only: other members are never decoded
            wds.batched(args.batch_size, collation_fn=collate),
        )

        # 3. train, recording both per-sample losses of every step
        model.train()
        losses = []
        with LossRecorder(args.run, round_) as recorder:
            for images, texts, uids, weights in data:
                img = model.encode_image(images, normalize=True)
                txt = model.encode_text(tokenizer(texts), normalize=True)
                loss_a, loss_b = clip_loss_per_sample(img, txt, model.logit_scale.exp())
                loss = (weights * (loss_a + loss_b) / 2).mean()  # == open_clip's ClipLoss when weights are 1
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                recorder.add(uids, loss_a, loss_b)
                losses.append(loss.item())

        # 4. checkpoint (curate losses / evaluation can read it)
        torch.save(model.state_dict(), f"{args.run}/checkpoint-round-{round_:04d}.pt")
        s = res.summary
        print(f"round {round_}: {s['phase']:<8} kept {s['kept']}/{s['pool']}  "
              f"steps {len(losses)}  loss {sum(losses) / max(len(losses), 1):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
