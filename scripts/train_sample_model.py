"""Train the built-in tiny CLIP (``--model sample``) on the sample shards, deterministically.

Usage:  python scripts/train_sample_model.py [--shards shards/sample] [--epochs 30] [--threads 1]
                                             [--out shards/tiny-clip]

Writes ``model.safetensors`` (fp16 weights, a few MB) and ``train_log.json`` (zero-shot accuracy on the
clean held-out split vs chance) next to the architecture config ``curate-tiny.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from curate.io.shards import decode_image, expand_shards, iter_shards
from curate.models import SAMPLE_ARCH, load_model, register_model_config
from curate.world import load_labelled_split, zero_shot_accuracy


def load_split(loaded, folder: Path) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Preprocessed images, captions and json of every sample in a split folder."""
    images, captions, metas = [], [], []
    for s in iter_shards(expand_shards(str(folder))):
        images.append(loaded.preprocess(decode_image(s.image_bytes)))
        captions.append(s.caption or "")
        metas.append(s.meta or {})
    return torch.stack(images), captions, metas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="shards/sample")
    ap.add_argument("--out", default="shards/tiny-clip")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (bit-exact weights need the same count)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    register_model_config(SAMPLE_ARCH, json.loads((out / f"{SAMPLE_ARCH}.json").read_text()))
    loaded = load_model(SAMPLE_ARCH, None, device="cpu", precision="fp32")
    model = loaded.model
    root = Path(args.shards)
    train_x, train_caps, _ = load_split(loaded, root / "train")
    classnames = (root / "classnames.txt").read_text().splitlines()
    test_x, test_y = load_labelled_split(loaded, str(root / "test"), classnames)
    templates = [t for t in (root / "templates.txt").read_text().splitlines() if t.strip()]
    tokens = loaded.tokenizer(train_caps)
    n = len(train_x)
    chance = 1.0 / len(classnames)
    print(f"train {n} samples, test {len(test_x)}, {len(classnames)} classes (chance {chance:.3f})")
    print(f"zero-shot before training: {zero_shot_accuracy(loaded, test_x, test_y, classnames, templates):.3f}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            img_f = model.encode_image(train_x[idx], normalize=True)
            txt_f = model.encode_text(tokens[idx], normalize=True)
            logits = model.logit_scale.exp() * img_f @ txt_f.T
            labels = torch.arange(len(idx))
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            tot += float(loss.detach()) * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            acc = zero_shot_accuracy(loaded, test_x, test_y, classnames, templates)
            print(f"epoch {epoch + 1}: loss {tot / n:.3f}  zero-shot {acc:.3f}  ({time.time() - t0:.0f}s)")
    acc = zero_shot_accuracy(loaded, test_x, test_y, classnames, templates)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    # Accuracy of the saved (fp16-rounded) weights, as users will load them.
    check = load_model("sample", device="cpu", precision="fp32")
    acc16 = zero_shot_accuracy(check, test_x, test_y, classnames, templates)
    log = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_samples": n, "test_samples": len(test_x), "classes": len(classnames),
        "zero_shot_top1": round(acc16, 4), "zero_shot_top1_fp32": round(acc, 4), "chance": round(chance, 4),
        "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log))


if __name__ == "__main__":
    main()
