"""Speed and peak memory of the ``amazon2023`` converter on synthetic data in the real format.

Writes ``Bench.jsonl.gz`` (``--reviews`` review lines, default 1,000,000) and
``meta_Bench.jsonl.gz`` (one line per product, with images, features, details, ...) that follow
the Amazon Reviews 2023 schema, then runs
``python -m recbole_llm.convert amazon2023 --input ... --output ...`` in a child process and
reports its wall time and peak resident memory (``ru_maxrss``). Run it pinned to one core::

    taskset -c 0 python benchmarks/convert_speed.py | tee benchmarks/results/convert_speed.txt
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "great quality product works well easy to use the and for with this that lab glass tube "
    "sturdy cheap price shipping arrived broken perfect size fits tool pack set clear strong "
    "durable recommend would buy again small large heavy light measure accurate kit sample"
).split()
LIMIT_SECONDS = 60.0
LIMIT_MIB = 1536.0


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def generate(folder: Path, n_reviews: int, seed: int = 0) -> tuple[Path, Path, int]:
    """Write the review and meta files; returns their paths and the number of meta lines."""
    rng = np.random.default_rng(seed)
    # About the shape of Amazon 2023 categories (Industrial & Scientific: 5.2M reviews by 3.4M
    # users on 0.4M products): most users and products have few reviews, a Zipf-like head has many.
    n_users = max(10, n_reviews // 3)
    n_items = max(10, n_reviews // 10)
    users = np.minimum(rng.zipf(1.3, size=n_reviews) - 1, n_users - 1)
    users = rng.permutation(n_users)[users] if n_reviews else users
    items = np.minimum(rng.zipf(1.2, size=n_reviews) - 1, n_items - 1)
    items = rng.permutation(n_items)[items]
    users = (users + rng.integers(0, n_users, size=n_reviews) * (rng.random(n_reviews) < 0.5)) % n_users
    user_ids = [f"AE{u:010d}" + "ABCDEFGHIJKLMNOP"[u % 16] * 16 for u in range(n_users)]
    item_ids = [f"B0{i:08X}" for i in range(n_items)]
    texts = [_sentence(rng, int(n)) for n in rng.integers(5, 80, size=1000)]
    titles = [_sentence(rng, int(n)) for n in rng.integers(1, 6, size=200)]
    ratings = rng.integers(1, 6, size=n_reviews)
    times = 1_400_000_000_000 + rng.integers(0, 300_000_000_000, size=n_reviews)
    picks = rng.integers(0, 1000, size=n_reviews)

    reviews = folder / "Bench.jsonl.gz"
    with gzip.open(reviews, "wt", encoding="utf-8", compresslevel=1) as handle:
        for k in range(n_reviews):
            item = item_ids[items[k]]
            handle.write(json.dumps({
                "rating": float(ratings[k]), "title": titles[picks[k] % 200], "text": texts[picks[k]],
                "images": [], "asin": item[:-1] + "V", "parent_asin": item, "user_id": user_ids[users[k]],
                "timestamp": int(times[k]), "helpful_vote": int(picks[k] % 7), "verified_purchase": bool(k % 3),
            }) + "\n")

    meta = folder / "meta_Bench.jsonl.gz"
    n_meta = int(n_items * 1.1)  # some products nobody reviewed
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=1) as handle:
        for i in range(n_meta):
            asin = f"B0{i:08X}"
            image = {size: f"https://m.media-amazon.com/images/I/{asin}{size}.jpg" for size in ("thumb", "large", "hi_res")}
            handle.write(json.dumps({
                "main_category": "Industrial & Scientific",
                "title": f"{titles[i % 200]} &amp; {texts[i % 1000][:60]}",
                "average_rating": 4.3, "rating_number": int(i % 500),
                "features": [texts[(i + j) % 1000][:120] for j in range(4)],
                "description": [texts[(i * 7) % 1000], "<p>" + texts[(i * 3) % 1000] + "</p>"],
                "price": None if i % 4 == 0 else round(5 + (i % 100) * 0.37, 2),
                "images": [dict(image, variant=v) for v in ("MAIN", "PT01", "PT02")],
                "videos": [],
                "store": f"Store {i % 300}",
                "categories": ["Industrial & Scientific", "Lab & Scientific Products", f"Kind {i % 40}"],
                "details": {"Brand": f"Brand {i % 300}", "Item Weight": "1.2 pounds",
                            "Manufacturer": f"Maker {i % 90}", "Date First Available": "May 5, 2015"},
                "parent_asin": asin, "bought_together": None,
            }) + "\n")
    return reviews, meta, n_meta


def run_converter(reviews: Path, meta: Path, output: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and printed summary of one conversion in a child process."""
    command = [sys.executable, "-m", "recbole_llm.convert", "amazon2023",
               "--input", str(reviews), str(meta), "--output", str(output), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"conversion failed:\n{out}")
    return seconds, usage.ru_maxrss / 1024, out.strip()


def import_baseline() -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of importing the converter alone (recbole, torch, ...)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "import recbole_llm.convert"], cwd=REPO, env=env)
    _, _, usage = os.wait4(child.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=1_000_000, help="review lines to generate")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        reviews, meta, n_meta = generate(folder, args.reviews)
        generated = time.perf_counter() - start
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
        print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
              f"CPU cores usable: {cores}")
        print(f"input: {args.reviews:,} review lines ({reviews.stat().st_size / 2**20:.1f} MiB gz), "
              f"{n_meta:,} meta lines ({meta.stat().st_size / 2**20:.1f} MiB gz); generated in {generated:.1f} s")
        base_seconds, base_mib = import_baseline()
        print(f"baseline: `import recbole_llm.convert` alone: {base_seconds:.1f} s, peak RSS {base_mib:.0f} MiB")
        seconds, mib, summary = run_converter(reviews, meta, folder / "out" / "Bench")
        print(summary)
        print(f"conversion: wall {seconds:.1f} s (limit {LIMIT_SECONDS:.0f} s), "
              f"peak RSS {mib:.0f} MiB (limit {LIMIT_MIB:.0f} MiB)")
        ok = seconds <= LIMIT_SECONDS and mib <= LIMIT_MIB
        print("within limits" if ok else "OVER LIMITS")


if __name__ == "__main__":
    main()
