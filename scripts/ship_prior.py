"""Replace a bundled prior by a newly trained one, but only if it measures better.

    python -m scripts.ship_prior digits runs/train/digits --comparison runs/recipes/digits/comparison.json

Both the candidate and the bundled weights are measured with ``benchmarks.prior_quality`` (same sampler, seeds and
references). The candidate ships when its primary metric is better — digits: domain FID at 20 steps with a
classifier confidence no lower; phantoms: the pooled Fréchet distance to real phantoms — or when nothing is
bundled yet. Its ``training.json`` then records the measurements, those of the weights it replaced, and the recipe
comparison that chose its recipe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lml_sampler._io import atomic_folder
from lml_sampler.models.bundled import WEIGHTS_DIR
from lml_sampler.models.training import run_lineage

from benchmarks.prior_quality import measure


def better(prior: str, new: dict, old: dict) -> bool:
    if prior == "digits":
        return new["fid"] < old["fid"] and new["confidence"] >= old["confidence"]
    return new["pooled_fd"] < old["pooled_fd"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", choices=("digits", "phantoms", "phantoms-complex"))
    p.add_argument("candidate", type=Path, help="exported pipeline folder of the new run")
    p.add_argument("--comparison", type=Path, default=None, help="comparison.json of scripts.compare_recipes")
    p.add_argument("--force", action="store_true", help="ship even if it does not measure better")
    args = p.parse_args(argv)
    info_path = args.candidate / "training.json"
    if not info_path.is_file():
        print(f"ship_prior: {args.candidate} is not an exported training run (no training.json)", file=sys.stderr)
        return 2
    if args.comparison is not None and not args.comparison.is_file():
        print(f"ship_prior: --comparison {args.comparison} does not exist (run scripts.compare_recipes measure)",
              file=sys.stderr)
        return 2
    target = WEIGHTS_DIR / args.prior
    new = measure(args.prior, args.candidate)
    old = measure(args.prior, target) if (target / "model_index.json").is_file() else None
    print(json.dumps({"candidate": new, "bundled": old}, indent=1))
    if old is not None and not better(args.prior, new, old) and not args.force:
        print(f"ship_prior: the candidate does not measure better than the bundled {args.prior!r}; kept the bundled "
              "weights", file=sys.stderr)
        return 1
    info = json.loads(info_path.read_text())
    info["quality"] = new
    if old is not None:
        previous = json.loads((target / "training.json").read_text())
        info["replaced"] = {"steps": previous.get("steps"), "train_minutes": previous.get("train_minutes"),
                            "quality": old}
    if args.comparison is not None:
        info["recipe_comparison"] = json.loads(args.comparison.read_text())
    info["lineage"] = run_lineage(info)
    with atomic_folder(target) as folder:
        shutil.copytree(args.candidate, folder, dirs_exist_ok=True)
        (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"shipped {args.candidate} as the bundled {args.prior!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
