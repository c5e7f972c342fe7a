"""Train a stronger proxy for the quality benchmark and write it as an open_clip ``local-dir:`` model.

The benchmark's default proxy (``--model sample``) reaches about 25% zero-shot: it is trained on the
3,000 noisy samples of ``shards/sample``. Users filter real pools with far stronger models, so the
benchmark also measures the static methods under a stronger proxy (``quality.py --proxy``). This one is
the benchmark's own 32 px architecture trained from scratch on the truly clean samples of a world that no
arm is scored on (seed 0 by default), the way a filtering network is trained on high-quality data.

Usage:  python benchmarks/proxy.py --out /tmp/curate-proxy [--world-seed 0] [--n-train 30000]
                                   [--epochs 20] [--threads 2]
Then:   python benchmarks/quality.py --proxy local-dir:/tmp/curate-proxy --workdir /tmp/curate-quality-proxy ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="model folder to write (open_clip_config.json + weights)")
    ap.add_argument("--world-seed", type=int, default=0, help="the world it trains on (not one arms are scored on)")
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc
    import torch
    from quality import ARCH, Setup, clean_uids, log, model_config
    from safetensors.torch import save_file

    from curate.io.manifest import Manifest
    from curate.io.shards import expand_shards
    from curate.models import load_model, register_model_config
    from curate.trainer.cached import CachedTrainConfig, SampleCache, static_plan, train_cached
    from curate.world import load_labelled_split, make_sample, read_truth, zero_shot_accuracy

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out / "world"
    params = {"seed": args.world_seed, "n_train": args.n_train, "n_test": args.n_test,
              "image_size": Setup.image_size}
    wj = work / "world.json"
    have = json.loads(wj.read_text()) if wj.exists() else None
    if have is None or {k: have["params"].get(k, have.get(k)) for k in params} != params:  # as quality.py
        log(f"generating world seed {args.world_seed} ({args.n_train} training samples) in {work}")
        make_sample(work, seed=args.world_seed, n_train=args.n_train, n_test=args.n_test, shard_size=2000,
                    image_size=Setup.image_size)
        (out / "cache-train.npz").unlink(missing_ok=True)  # decoded from another world
    shards = expand_shards(str(work / "train"))
    setup = Setup(world_seed=args.world_seed, n_train=args.n_train, n_test=args.n_test)
    cfg = model_config(setup)
    register_model_config(ARCH, cfg)
    torch.manual_seed(args.seed)
    loaded = load_model(ARCH, None, device="cpu", precision="fp32")
    cache_path = out / "cache-train.npz"
    if not cache_path.exists():
        SampleCache.build(shards, loaded).save(cache_path)
    cache = SampleCache.load(cache_path)
    clean = clean_uids(read_truth(shards)).combine_chunks()
    uids = pa.array(cache.uids)
    keep = pc.filter(uids, pc.is_in(uids, value_set=clean))
    manifest = Manifest(pa.table({"uid": keep, "weight": pa.array(np.ones(len(keep), np.float32))}))
    log(f"training on {len(keep)} truly clean samples of {len(cache)}, {args.epochs} epochs")
    t0 = time.perf_counter()
    train_cached(loaded, cache, CachedTrainConfig(rounds=args.epochs, batch_size=setup.batch_size, lr=setup.lr,
                                                  weight_decay=setup.weight_decay, warmup=setup.lr_warmup,
                                                  seed=args.seed), static_plan(manifest))
    names = (work / "classnames.txt").read_text().splitlines()
    templates = [t for t in (work / "templates.txt").read_text().splitlines() if t.strip()]
    test_x, test_y = load_labelled_split(loaded, str(work / "test"), names)
    acc = zero_shot_accuracy(loaded, test_x, test_y, names, templates)
    state = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}, indent=2))
    info = {"world_seed": args.world_seed, "n_train": args.n_train, "clean_samples": len(keep),
            "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
            "zero_shot_top1": round(acc, 4), "chance": round(1 / len(names), 4),
            "seconds": round(time.perf_counter() - t0, 1)}
    (out / "proxy.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"proxy written to {out}: {json.dumps(info)}")


if __name__ == "__main__":
    main()
