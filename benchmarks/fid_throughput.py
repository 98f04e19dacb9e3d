"""Throughput of the FID feature pass vs the bare extractor forward, and memory vs N.

The feature pass is what a sweep does per generated batch: uint8 images -> extractor input range -> features
-> float64 running sums (``FeatureStatistics.update``). "bare" is ``module(x)`` on a ready float tensor.
Memory: the process's peak RSS is recorded after streaming N = 1k, 4k, 16k, ... images through the pass in the
same process; constant-memory statistics keep it flat (only O(d²) state, independent of N).

    OMP_NUM_THREADS=1 python -m benchmarks.fid_throughput [--extractors digits-features,random-conv] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from lml_sampler.eval.extractors import load_feature_extractor
from lml_sampler.eval.fid import FeatureStatistics


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, batch: int, size: int, channels: int, ns: list[int], repeats: int) -> dict:
    ext = load_feature_extractor(name, in_channels=channels)
    module = getattr(ext, "module", ext)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)
    x = imgs.float() / 127.5 - 1.0
    with torch.no_grad():
        d = ext(imgs[:2]).shape[1]
        bare = _time(lambda: module(x), repeats)
    stats = FeatureStatistics(d)
    full = _time(lambda: stats.update(ext(imgs)), repeats)
    memory = []
    stats = FeatureStatistics(d)
    done = 0
    for n in ns:
        while done < n:
            b = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)
            stats.update(ext(b))
            done += batch
        memory.append({"n": done, "peak_rss_mib": round(_peak_rss_mib(), 1)})
    return {"extractor": name, "batch": batch, "image": f"{channels}x{size}x{size}", "features": d,
            "bare_img_per_s": batch / bare, "pass_img_per_s": batch / full, "overhead": full / bare - 1.0,
            "state_mib": (d * d + d) * 8 / 2**20, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extractors", default="digits-features,random-conv")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--ns", default="1000,4000,16000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="runs/bench/fid_throughput.json")
    args = p.parse_args(argv)
    rows = []
    for name in args.extractors.split(","):
        size, channels = (299, 3) if name == "inception" else (args.size, 1)
        try:
            rows.append(bench(name, args.batch, size, channels, [int(n) for n in args.ns.split(",")], args.repeats))
        except (FileNotFoundError, ImportError) as exc:
            print(f"skip {name}: {exc}", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| extractor | images | d | bare forward (img/s) | feature pass (img/s) | overhead | peak RSS (MiB) at N |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mem = ", ".join(f"{m['n']}: {m['peak_rss_mib']:.0f}" for m in r["memory"])
        print(f"| {r['extractor']} | {r['image']} | {r['features']} | {r['bare_img_per_s']:.0f} | "
              f"{r['pass_img_per_s']:.0f} | {100 * r['overhead']:+.1f} % | {mem} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
