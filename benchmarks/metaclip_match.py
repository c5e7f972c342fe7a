"""metaclip's caption matcher: captions per minute on one core against a 500k-entry metadata list.

The entries and captions are generated (seeded) to look like MetaCLIP's: a Zipf vocabulary of made-up
words built from syllables (so entries share prefixes as real words do); entries in MetaCLIP's mix
(its 500k: WordNet synsets 86,654, Wikipedia unigrams 251,465, bigrams 100,646, titles 61,235), that is
338k single words and short phrases from the head of the vocabulary, 101k frequent bigrams and 61k
capitalised titles of 2–4 words; captions of 3–25 words (mean about 9) drawn from the same
vocabulary, with punctuation, capitals, and a title or bigram in some of them. Rare words (the
vocabulary's tail) are in no entry, so not every word matches.

Measured: building the automaton (seconds, growth of peak RSS), then ``EntryMatcher.match`` over the
captions in blocks of 65,536, as a selection's pass 1 calls it (CPU seconds of this process, one
thread), and, on a hundred captions, agreement with a brute-force substring check of every entry.
For the whole of metaclip's pass 1, the captions are also written into tar shards (``--shard-samples``
of them, with ``--image-bytes`` of random image bytes each, as a stand-in for real images) and read back
with ``curate.select.captions.read_captions``: the CPU time per sample of reading plus matching.

    python benchmarks/metaclip_match.py --out benchmarks/results/metaclip_match.md
    python benchmarks/metaclip_match.py --entries 500000 --captions 300000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import metric, write_summary  # noqa: E402

_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "th", "ch", "sh",
           "st", "tr", "br", "gr", "pl", "cl", "fr", "bl", "sp")
_VOWELS = ("a", "e", "i", "o", "u", "ea", "ou", "ai", "y", "io")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng")
_PUNCT = ("", "", "", ",", ".", "!", ":", ";", "?", " -", " |")


class TextWorld:
    """A seeded vocabulary, metadata entries and captions (see the module docstring)."""

    def __init__(self, seed: int = 0, vocab: int = 400_000) -> None:
        self.rng = np.random.default_rng(seed)
        words: dict[str, None] = {}
        r = self.rng
        while len(words) < vocab:
            x = r.random()
            n = 1 + int(x > 0.45) + int(x > 0.85)  # syllables: 1, 2 or 3
            w = "".join(_ONSETS[int(r.integers(len(_ONSETS)))] + _VOWELS[int(r.integers(len(_VOWELS)))]
                        for _ in range(n)) + _CODAS[int(r.integers(len(_CODAS)))]
            words[w] = None
        self.vocab = list(words)
        p = 1.0 / np.arange(1, vocab + 1)
        self.cdf = np.cumsum(p / p.sum())

    def draw(self, k: int) -> np.ndarray:
        """``k`` word indices, Zipf(1) over the vocabulary."""
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(k)), len(self.vocab) - 1)

    def entries(self, n: int = 500_000) -> list[str]:
        """``n`` distinct entries in MetaCLIP's proportions (single words, bigrams, titles), shuffled."""
        n_bi, n_title = round(n * 100_646 / 500_000), round(n * 61_235 / 500_000)
        n_uni = n - n_bi - n_title
        out: dict[str, None] = dict.fromkeys(self.vocab[: int(n_uni * 0.9)])
        while len(out) < n_uni:  # WordNet-like two-word names among the single entries
            a, b = self.draw(2)
            out[f"{self.vocab[a]} {self.vocab[b]}"] = None
        while len(out) < n_uni + n_bi:
            a, b = self.draw(2)
            out[f"{self.vocab[a]} {self.vocab[b]}"] = None
        while len(out) < n:
            k = int(self.rng.integers(2, 5))
            out[" ".join(self.vocab[w].capitalize() for w in self.draw(k))] = None
        keys = list(out)
        return [keys[i] for i in self.rng.permutation(len(keys))]

    def captions(self, n: int, titles: list[str] | None = None) -> list[str]:
        """``n`` captions of 3–25 words, some capitalised, some with a title or punctuation."""
        r = self.rng
        lengths = np.clip(r.geometric(0.12, n) + 1, 3, 25)
        words = self.draw(int(lengths.sum()))
        out, at = [], 0
        for k in lengths:
            ws = [self.vocab[i] for i in words[at : at + k]]
            at += k
            if r.random() < 0.3:
                ws[0] = ws[0].capitalize()
            if titles and r.random() < 0.15:
                ws.insert(int(r.integers(len(ws) + 1)), titles[int(r.integers(len(titles)))])
            if r.random() < 0.4:
                i = int(r.integers(len(ws)))
                ws[i] += _PUNCT[int(r.integers(len(_PUNCT)))]
            out.append(" ".join(ws) + (_PUNCT[int(r.integers(len(_PUNCT)))] if r.random() < 0.5 else ""))
        return out


def read_back(caps: list[str], image_bytes: int, matcher: object) -> tuple[float, int]:
    """Write ``caps`` into tars of 10,000 samples, read them back as a block of pool rows: CPU seconds."""
    from curate.io.tarwrite import write_tar
    from curate.select.captions import shard_captions

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, image_bytes, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for s, a in enumerate(range(0, len(caps), 10_000)):
            path = Path(tmp) / f"{s:05d}.tar"
            write_tar(path, [(f"{i:09d}", {"jpg": image, "txt": caps[i].encode()})
                             for i in range(a, min(len(caps), a + 10_000))])
            shards.append((path, a, min(len(caps), a + 10_000)))
        c0 = time.process_time()
        for path, a, b in shards:
            keys = [f"{i:09d}" for i in range(a, b)]
            got = shard_captions(path.stem, str(path), keys, np.arange(b - a))
            matcher.match(got)  # type: ignore[attr-defined]
        return time.process_time() - c0, len(caps)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--captions", type=int, default=200_000)
    ap.add_argument("--check", type=int, default=100, help="captions checked against a brute-force match")
    ap.add_argument("--shard-samples", type=int, default=40_000, help="samples written to tars and read back")
    ap.add_argument("--image-bytes", type=int, default=8_000, help="bytes of the stand-in image member")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the result as Markdown here")
    ap.add_argument("--summary-json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from embed_throughput import commit, machine  # imports torch: only when this script runs

    from curate.select.metaclip import EntryMatcher, spaced

    t0 = time.perf_counter()
    world = TextWorld(args.seed)
    entries = world.entries(args.entries)
    titles = [e for e in entries if e[:1].isupper()]
    caps = world.captions(args.captions, titles)
    gen_s = time.perf_counter() - t0
    print(f"generated {len(entries):,} entries and {len(caps):,} captions in {gen_s:.1f}s "
          f"(mean caption {np.mean([len(c) for c in caps]):.0f} characters)", flush=True)

    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    matcher = EntryMatcher(entries)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    build_mb = peak_rss_mb() - rss0

    block = 65_536
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0
    matched = 0
    for a in range(0, len(caps), block):
        offsets, ids = matcher.match(caps[a : a + block])
        total += len(ids)
        matched += int((np.diff(offsets) > 0).sum())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_min = len(caps) / cpu * 60

    check = caps[: args.check]
    t0 = time.perf_counter()
    keys = [f" {e} " for e in entries]
    brute = [sorted(i for i, k in enumerate(keys) if k in spaced(c)) for c in check]
    brute_s = time.perf_counter() - t0
    off, ids = matcher.match(check)
    agree = all(list(ids[off[i] : off[i + 1]]) == brute[i] for i in range(len(check)))

    read_cpu, n_read = read_back(caps[: args.shard_samples], args.image_bytes, matcher)

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        ("entries", f"{len(entries):,}"),
        ("captions (mean characters)", f"{len(caps):,} ({np.mean([len(c) for c in caps]):.0f})"),
        ("automaton build", f"{build_s:.1f} s wall, {build_cpu:.1f} CPU-s; peak RSS +{build_mb:.0f} MB"),
        ("matching, one core", f"**{per_min / 1e6:.2f} M captions/min** ({cpu / len(caps) * 1e6:.1f} CPU-µs per "
                               f"caption; {wall:.1f} s wall)"),
        ("entries matched per caption (captions with ≥ 1)", f"{total / len(caps):.2f} ({matched / len(caps):.1%})"),
        (f"brute force on {len(check)} captions", f"{'agrees' if agree else 'DISAGREES'}; "
                                                  f"{brute_s / len(check) * 1e3:.0f} ms per caption"),
        (f"pass 1: captions read back from tar shards + matched ({n_read:,} samples, "
         f"{args.image_bytes:,}-byte images)", f"{read_cpu / n_read * 1e6:.1f} CPU-µs per sample "
                                               f"({n_read / read_cpu * 60 / 1e6:.2f} M samples/min, one core)"),
    ]
    md = [
        "# metaclip caption matching",
        "",
        f"`python benchmarks/metaclip_match.py --entries {args.entries} --captions {args.captions}` on "
        f"{dt.date.today()}, commit {commit()}: {machine()}, Python {platform.python_version()}, load average "
        f"{load} (1/5/15 min) at the end of the run. CPU time of this process (one thread).",
        "",
        "| what | value |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
    ]
    text = "\n".join(md)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    write_summary(args.summary_json, "metaclip_match", [
        metric("pass 1 (read back + match) per sample", read_cpu / n_read * 1e6, "CPU-µs"),
        metric("captions per minute (one core)", per_min, "captions/min", "higher"),
        metric("automaton build", build_s, "s"),
        metric("automaton peak RSS growth", build_mb, "MB"),
    ])
    if not agree:
        sys.exit("the matcher disagrees with the brute-force check")


if __name__ == "__main__":
    main()
