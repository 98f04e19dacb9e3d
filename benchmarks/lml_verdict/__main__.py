"""Does LML help? Run the error-vs-NFE study of the LML variants and regenerate its README sections.

    python -m benchmarks.lml_verdict [--quick] [--report-only] [--out DIR] [--no-readme] [--benchmarks LIST]
                                     [--nfes LIST] [--report-top K] [--shard I/N]

``--nfes`` runs only some NFEs (successive runs add up in the cell store, so a long study can run in priority
order: 5,10 first); ``--report-top K`` runs only the K best families by seed set 0 on the report seed sets;
``--shard I/N`` is the I-th of N processes that share the cells (each ensures all of them, its own share first).

Only a full run (neither ``--quick`` nor ``--no-readme``) writes into the repository: the README sections
``headline``, ``verdict``, ``tuning`` and ``recommended`` (through ``benchmarks/recommended/lml_verdict.json``) and
``docs/images/lml_verdict*.png``.
Otherwise the plots stay in the run folder and the section is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

from lml_sampler._io import check_output_folder

from benchmarks.readme import publish_image, update_readme_section
from benchmarks.recommended import publish

from .benchmarks import BENCHMARKS
from .report import markdown, recommendations, target_sentence, trusted_settings, tuning_lines, write_plots
from .runner import collect_all, run_benchmark
from .specs import NFES, REPORT_SEEDS, TUNE_SEED


def _fail(message: str) -> None:
    print(f"lml_verdict: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lml_verdict", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, NFE 5/10, reduced grids, seeds 0/1")
    ap.add_argument("--out", type=Path, default=None, help="cell folder (default runs/lml_verdict[_quick])")
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                    help="comma-separated subset of " + ",".join(BENCHMARKS))
    ap.add_argument("--nfes", default=None, help="comma-separated NFEs to run this time (default: all)")
    ap.add_argument("--report-top", type=int, default=None,
                    help="report seed sets: only the K best families by seed set 0 (default: every family)")
    ap.add_argument("--shard", default="0/1", help="I/N: this is process I of N sharing the cell store")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the README sections and plots")
    ap.add_argument("--no-readme", action="store_true", help="do not touch the repository (print the section)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        _fail(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    try:
        nfes = None if args.nfes is None else tuple(int(n) for n in args.nfes.split(",") if n.strip())
    except ValueError:
        _fail(f"--nfes must be comma-separated integers, got {args.nfes!r}")
    if nfes is not None and (not nfes or any(n not in NFES for n in nfes)):
        _fail(f"--nfes must be a non-empty subset of {','.join(map(str, NFES))}, got {args.nfes!r}")
    if args.report_top is not None and args.report_top < 1:
        _fail(f"--report-top must be >= 1, got {args.report_top}")
    try:
        shard = tuple(int(v) for v in args.shard.split("/"))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            raise ValueError
    except ValueError:
        _fail(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    out_dir = args.out or Path("runs") / ("lml_verdict_quick" if args.quick else "lml_verdict")
    try:
        check_output_folder(out_dir)
    except ValueError as e:
        _fail(str(e))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create --out {out_dir}: {exc.strerror}")
    # diffusers warns on every scheduler built with algorithm_type="dpmsolver", the released LML code's baseline
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = (0, 1) if args.quick else (TUNE_SEED,) + REPORT_SEEDS
    if not args.report_only:
        for name in names:
            try:
                bench = BENCHMARKS[name](args.quick)
            except (FileNotFoundError, OSError, ValueError) as exc:
                print(f"[{name}] skipped: {exc}", flush=True)
                continue
            run_benchmark(out_dir, bench, bench.seeds or seeds, nfes=nfes, report_top=args.report_top,
                          shard=shard)
    results = collect_all(out_dir)
    if not results:
        _fail(f"no results under {out_dir}: run the study first")
    plots = write_plots(results, out_dir)
    if args.quick or args.no_readme:
        print(markdown(results, args.quick, plots["verdict"].as_posix(), plots["ratio"].as_posix()))
        return
    links = {key: publish_image(path, path.name) for key, path in plots.items()}
    md = markdown(results, args.quick, links["verdict"], links["ratio"])
    update_readme_section("verdict", md)
    update_readme_section("tuning", "\n".join(tuning_lines(results)))
    update_readme_section("headline", target_sentence(results) + " (\"Does LML help?\" below.)")
    publish("lml_verdict", recommendations(results), trusted=trusted_settings(results))
    print(md)


if __name__ == "__main__":
    main()
