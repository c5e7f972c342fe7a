"""A stand-in for ``python -m open_clip_train.main`` in tests of examples/open_clip_rounds.sh.

Accepts the arguments the recipe passes, reads the '::'-joined shards with webdataset (one epoch),
takes one optimizer step per batch on a tiny open_clip model, and saves checkpoints in open_clip_train's
format (``{"epoch", "name", "state_dict"}``, ``epoch_<N>.pt`` and ``epoch_latest.pt``). It records the
shards and sample count it was given in ``<logs>/<name>/calls.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import webdataset as wds

from curate.models import load_model


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for opt in ("--model", "--dataset-type", "--train-data", "--train-num-samples", "--epochs", "--resume",
                "--logs", "--name", "--report-to", "--batch-size", "--lr"):
        p.add_argument(opt)
    p.add_argument("--save-most-recent", action="store_true")
    a = p.parse_args(argv)
    ckpt_dir = Path(a.logs) / a.name / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clip = load_model(a.model, device="cpu", precision="fp32")
    model = clip.model
    latest = ckpt_dir / "epoch_latest.pt"
    start = 0
    if a.resume == "latest" and latest.exists():
        state = torch.load(latest, weights_only=True)
        model.load_state_dict(state["state_dict"])
        start = state["epoch"]
    opt = torch.optim.SGD(model.parameters(), lr=float(a.lr or 0.01))
    urls = a.train_data.split("::")
    data = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode("pilrgb"),
                            wds.to_tuple("jpg;png", "txt"), wds.map_tuple(clip.preprocess, None),
                            wds.batched(int(a.batch_size or 16)))
    seen = 0
    for epoch in range(start, int(a.epochs)):
        model.train()
        for images, texts in data:
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(clip.tokenizer(list(texts)), normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            labels = torch.arange(len(texts))
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(texts)
        state = {"epoch": epoch + 1, "name": a.name,
                 "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
        torch.save(state, ckpt_dir / f"epoch_{epoch + 1}.pt")
        torch.save({**state, "state_dict": model.state_dict()}, latest)
    with open(Path(a.logs) / a.name / "calls.jsonl", "a") as f:
        f.write(json.dumps({"urls": urls, "num_samples": int(a.train_num_samples), "seen": seen,
                            "epochs": int(a.epochs), "start": start}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
