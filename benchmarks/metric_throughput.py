"""Throughput and memory of the evaluation metrics: the feature pass vs the metric time at N = 10k and 50k.

* feature pass: N uint8 16×16 images → the bundled ``digits-features`` extractor (d = 64) in batches of 250, what a
  sweep does per generated batch (Inception's feature pass needs weights this machine does not have);
* metrics of N generated against N reference features: ``fid`` (float64 statistics + Fréchet distance), ``fid_se``
  (jackknife, 20 groups), ``kid`` (100 subsets of 1000 + the jackknife SE: one chunked pass over the kernel
  matrices), ``pr`` (precision / recall / density / coverage, k = 3, chunked distances), at d = 64 and at
  d = 2048 (Inception's dimension; synthetic Gaussian features: the time does not depend on their values).

Each measurement runs in its own process and reports its wall time, its CPU time (on shared cores the wall time
also counts the other processes' share), its peak RSS and the RSS once the features are loaded (the difference is
the metric's working memory). Results are cells of a ``CellStore`` (resumable).

    OMP_NUM_THREADS=1 python -m benchmarks.metric_throughput [--ns 10000,50000] [--dims 64,2048] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from lml_sampler._io import CellStore

KINDS = ("feature_pass", "fid", "fid_se", "kid", "pr")


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _result(t0: float, c0: float, n: int, base: float) -> dict:
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "per_sample_us": 1e6 * cpu / n, "base_rss_mib": base,
            "peak_rss_mib": _peak_mib()}


def measure(kind: str, n: int, d: int) -> dict:
    """One measurement in this process."""
    import lml_sampler.eval as ev

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if kind == "feature_pass":
        ext = ev.load_feature_extractor("digits-features")
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
        base = _rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        stats = ev.FeatureStatistics(64)
        for a in range(0, n, 250):
            stats.update(ev.extract_features(ext, images[a : a + 250]))
        return _result(t0, c0, n, base)
    rng = np.random.default_rng(0)
    fake = rng.standard_normal((n, d))
    real = rng.standard_normal((n, d)) * 1.05
    ref = ev.compute_statistics(real) if kind in ("fid", "fid_se") else None  # the reference side: not timed
    base = _rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "fid":
        ev.frechet_distance(ev.compute_statistics(fake), ref)
    elif kind == "fid_se":
        ev.fid_jackknife(fake, ref)
    elif kind == "kid":
        ev.kernel_inception_distance(fake, real)
    elif kind == "pr":
        ev.precision_recall(fake, real, 3)
    else:
        raise ValueError(kind)
    return _result(t0, c0, n, base)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="10000,50000")
    p.add_argument("--dims", default="64,2048")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out", default="runs/bench/metric_throughput")
    p.add_argument("--one", nargs=3, metavar=("KIND", "N", "D"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, n, d = args.one
        print(json.dumps(measure(kind, int(n), int(d))))
        return 0
    store = CellStore(args.out)
    rows = []
    for n in (int(v) for v in args.ns.split(",")):
        for kind in args.kinds.split(","):
            for d in ([64] if kind == "feature_pass" else [int(v) for v in args.dims.split(",")]):
                manifest = {"kind": kind, "n": n, "d": d, "threads": os.environ.get("OMP_NUM_THREADS", "1")}

                def run(kind=kind, n=n, d=d) -> dict:
                    res = subprocess.run([sys.executable, "-m", "benchmarks.metric_throughput", "--one", kind, str(n),
                                          str(d)], capture_output=True, text=True, check=True)
                    return {**manifest, **json.loads(res.stdout.strip().splitlines()[-1])}

                rows.append(store.ensure(f"{kind}_n{n}_d{d}", manifest, run))
                r = rows[-1]
                print(f"{kind:12s} N={n:6d} d={d:5d}: {r['cpu_seconds']:9.2f} s CPU ({r['seconds']:9.2f} s wall)  "
                      f"peak RSS {r['peak_rss_mib']:7.0f} MiB (features loaded: {r['base_rss_mib']:7.0f} MiB)",
                      flush=True)
    print(f"\ntorch {torch.__version__}, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s)\n")
    print("CPU seconds of one process (wall time is in the cells); memory: peak RSS above the loaded features\n")
    print("| N | d | feature pass (s) | FID (s) | FID SE (s) | KID + SE (s) | precision/recall (s) | "
          "working memory KID / PR (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    cell = {(r["kind"], r["n"], r["d"]): r for r in rows}
    for n in sorted({r["n"] for r in rows}):
        for d in sorted({r["d"] for r in rows if r["kind"] != "feature_pass"}):
            def sec(kind, dd=d):
                r = cell.get((kind, n, dd))
                return f"{r['cpu_seconds']:.2f}" if r else "–"

            def mem(kind):
                r = cell.get((kind, n, d))
                return f"{r['peak_rss_mib'] - r['base_rss_mib']:.0f}" if r else "–"

            fp = sec("feature_pass", 64) if d == 64 else "not measured (no Inception weights)"
            print(f"| {n} | {d} | {fp} | {sec('fid')} | {sec('fid_se')} | {sec('kid')} | {sec('pr')} | "
                  f"{mem('kid')} / {mem('pr')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
