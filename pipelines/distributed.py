"""Distributed training: the training loop of pipelines/train.py under torchrun with DistributedDataParallel.

`train.processes: N` (or `nlpops train --nproc N`) makes the train stage start
`python -m torch.distributed.run --standalone --nproc-per-node N -m pipelines.distributed --job JOB` and wait for
it. Every rank runs the same `train_model`; the helpers below are what it calls, and each is a no-op in a single
process, so the loop has one code path:

- the epoch's length-grouped batches are the same list on every rank (same seed); each *global* batch
  (`train.batch_size` rows) is split across the ranks (`shard`), so every rank takes the same number of optimiser
  steps and the global batch is that of a single process. Each rank's loss is weighted by its share of the batch
  and DDP averages the gradients: the update is the one a single process computes on the whole batch (exact for
  per-example losses such as sequence classification, up to float summation order);
- gradients are all-reduced by `torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL when CUDA is there);
- rank 0 validates, saves the best model, writes the resumable checkpoints (with every rank's RNG state and
  partial epoch loss, gathered, so a resumed run continues exactly) and, in the stage, logs to MLflow; the other
  ranks take rank 0's per-epoch record (`broadcast`), so early stopping decides the same everywhere.

Multi-node: run the same module under torchrun on every node (infra/k8s/torchrun-job.yaml):
`python -m torch.distributed.run --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400
-m pipelines.distributed --params params.yaml [-e NAME] [--set k=v]`; global rank 0 runs the train stage (MLflow
run, summary), the others the bare loop. The artifacts and state dirs must be on storage every node sees.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.config import Params

# How long a rank waits for the others at a collective (rank 0 validating a large split, writing a checkpoint).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


# ---------------------------------------------------------------- inside a rank


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def under_torchrun() -> bool:
    """This process is one rank of a torchrun job (the launcher sets these)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    return rank() == 0


def init_process_group() -> None:
    """Join the torchrun job: NCCL when this rank has a GPU, gloo otherwise."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)


def seed_rank(seed: int) -> None:
    """Own dropout masks per rank (rank 0 keeps the single-process stream); the weights are broadcast by DDP."""
    if world_size() > 1 and rank() > 0:
        import torch

        torch.manual_seed(seed + 7919 * rank())


def wrap(model: Any) -> Any:
    """The module the loop calls: DDP around the model when distributed (built on its current trainable set)."""
    if world_size() == 1:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard(batch: list[int]) -> tuple[list[int], float, int]:
    """This rank's rows of a global batch, its loss weight and how many real rows it holds.

    Rows are dealt round-robin (rank r takes rows r, r+W, ...), so shards differ by at most one row and keep the
    batch's similar lengths. The weight n_r * W / n makes DDP's average of the ranks' mean losses the mean over
    the whole batch. A rank left without a row (a last batch smaller than the world) still takes part in the
    all-reduce: it runs one row with weight 0.
    """
    size = world_size()
    if size == 1:
        return batch, 1.0, len(batch)
    part = batch[rank() :: size]
    if not part:
        return batch[:1], 0.0, 0
    return part, len(part) * size / len(batch), len(part)


def all_sum(*values: float) -> tuple[float, ...]:
    """Sums over the ranks (the epoch's training loss and rows seen)."""
    dist = _dist()
    if dist is None:
        return tuple(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tuple(float(v) for v in tensor.tolist())


def broadcast(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere); [obj] in a single process."""
    dist = _dist()
    if dist is None:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def own_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's part of a distributed checkpoint (its RNG and partial epoch loss); None in a single process."""
    ranks = checkpoint.get("ranks")
    if world_size() == 1 or not ranks or len(ranks) != world_size():
        return None
    return ranks[rank()]


# ---------------------------------------------------------------- launching


def should_launch(processes: int) -> bool:
    """Start torchrun: more than one process asked for, and this process is not already a rank."""
    return processes > 1 and not under_torchrun()


def _threads_per_process(processes: int, num_threads: int | None) -> int:
    from pipelines.cpu import usable_cores

    return num_threads or max(1, usable_cores() // processes)


def die_with_parent() -> None:
    """This process gets SIGTERM when its parent dies, even by SIGKILL (Linux): torchrun when the launching process
    goes, each rank when torchrun goes (torchrun starts the ranks in sessions of their own)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


# `python -m torch.distributed.run ARGS`, made to stop with this process: the death signal is asked for after exec, in
# the new interpreter (a preexec_fn is unsafe in a process with threads, such as a Prefect task's).
_TORCHRUN = (
    "import runpy, sys; from pipelines.distributed import die_with_parent; die_with_parent(); "
    "sys.argv[0] = 'torchrun'; runpy.run_module('torch.distributed.run', run_name='__main__', alter_sys=True)"
)


def torchrun(processes: int, job: dict[str, Any], log_path: Path, threads: int) -> dict[str, Any]:
    """Run `job` under torchrun with `processes` ranks on this host; returns rank 0's result.

    The ranks' output goes to log_path. A failure raises the error rank 0 reported (same type and message as in a
    single process), or one line naming the log.
    """
    from pipelines import errors

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nlpops-ddp-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps({**job, "result": str(result_file)}, default=str))
        command = [sys.executable, "-c", _TORCHRUN, "--standalone", "--nnodes=1"]
        command += [f"--nproc-per-node={processes}", "--max-restarts=0", "-m", "pipelines.distributed"]
        command += ["--job", str(job_file)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        repo = str(Path(__file__).resolve().parents[1])  # the ranks import this checkout's pipelines package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        with log_path.open("w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if "summary" not in result and "error" not in result:  # the first rank to fail stopped the others
            for failed in sorted(Path(tmp).glob("result.json.rank*")):
                result = json.loads(failed.read_text())
                break
    if "error" in result:
        err = result["error"]
        kind = getattr(errors, str(err.get("type")), None)
        if isinstance(kind, type) and issubclass(kind, errors.NlpopsError):
            try:
                raised = kind(err["message"])
            except TypeError:
                raised = errors.NlpopsError(err["message"])
            raise raised
        raise RuntimeError(f"{err.get('type')}: {err.get('message')} (distributed training, log {log_path})")
    if done.returncode != 0 or "summary" not in result:
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise errors.NlpopsError(
            f"distributed training ({processes} processes) failed with exit code {done.returncode}"
            + (f": {tail[0][:300]}" if tail else "")
            + f"; see {log_path}"
        )
    return result["summary"]


def launch_train_stage(params: Params, run_id: str | None = None) -> dict[str, Any]:
    """The train stage on `train.processes` ranks (rank 0 runs pipelines.stages.train.run_train)."""
    from pipelines.paths import StagePaths

    processes = params.train.processes
    paths = StagePaths.from_params(params)
    log_path = paths.experiment_state / "logs" / "train-torchrun.log"
    job = {
        "kind": "stage",
        "params": params.model_dump(mode="json", by_alias=True, exclude_unset=True),  # keeps "which keys were set"
        "cwd": os.getcwd(),
        "run_id": run_id,
    }
    threads = _threads_per_process(processes, params.train.num_threads)
    return torchrun(processes, job, log_path, threads)


def train_model_distributed(
    processes: int,
    tokenised_dir: Path,
    id2label: dict[int, str],
    model_path: Path,
    out_dir: Path,
    train_cfg: Any,
    model_cfg: Any,
    task_name: str,
    pad_token_id: int,
    checkpoint_dir: Path | None = None,
    val_path: Path | None = None,
    metric: str | None = None,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """`train_model` itself on `processes` ranks, without the stage around it (tests, benchmarks)."""
    job = loop_job(
        tokenised_dir, id2label, model_path, out_dir, train_cfg, model_cfg, task_name, pad_token_id, checkpoint_dir,
        val_path, metric,
    )  # fmt: skip
    log = log_path or Path(out_dir).parent / f"{Path(out_dir).name}-torchrun.log"
    return torchrun(processes, job, log, _threads_per_process(processes, train_cfg.num_threads))


def loop_job(
    tokenised_dir: Path,
    id2label: dict[int, str],
    model_path: Path,
    out_dir: Path,
    train_cfg: Any,
    model_cfg: Any,
    task_name: str,
    pad_token_id: int,
    checkpoint_dir: Path | None = None,
    val_path: Path | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """The job file's content for `train_model` on the ranks (`--job`)."""
    return {
        "kind": "loop",
        "args": {
            "tokenised_dir": str(tokenised_dir),
            "id2label": {str(k): v for k, v in id2label.items()},
            "model_path": str(model_path),
            "out_dir": str(out_dir),
            "train": train_cfg.model_dump(mode="json", exclude_unset=True),
            "model": model_cfg.model_dump(mode="json", exclude_unset=True),
            "task": task_name,
            "pad_token_id": pad_token_id,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            "val_path": str(val_path) if val_path else None,
            "metric": metric,
        },
    }


# ---------------------------------------------------------------- the rank's entry point


def _train_other_rank(params: Params) -> dict[str, Any]:
    """What run_train does, without MLflow and outputs: the loop's share of a rank other than 0."""
    import pandas as pd

    from pipelines.paths import StagePaths
    from pipelines.pretrained import resolve_model_path
    from pipelines.stages.common import label_map, read_json
    from pipelines.tasks.catalog import get_task
    from pipelines.train import train_model

    paths = StagePaths.from_params(params)
    manifest = read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    return train_model(
        paths.tokenised_dir,
        label_map(paths),
        resolve_model_path(params.model),
        paths.model_dir,
        params.train,
        params.model,
        get_task(params),
        manifest["pad_token_id"],
        checkpoint_dir=paths.checkpoint_dir,
        val_frame=pd.read_parquet(paths.clean_split("validation")),
        metric=params.stopping_metric,
    )


def _run_loop(args: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from pipelines.config import ModelConfig, TrainConfig
    from pipelines.tasks.catalog import get_task
    from pipelines.train import train_model

    val = args.get("val_path")
    return train_model(
        Path(args["tokenised_dir"]),
        {int(k): v for k, v in args["id2label"].items()},
        Path(args["model_path"]),
        Path(args["out_dir"]),
        TrainConfig.model_validate(args["train"]),
        ModelConfig.model_validate(args["model"]),
        get_task(args["task"]),
        int(args["pad_token_id"]),
        checkpoint_dir=Path(args["checkpoint_dir"]) if args.get("checkpoint_dir") else None,
        val_frame=pd.read_parquet(val) if val else None,
        metric=args.get("metric"),
    )


def _params_from_cli(ns: argparse.Namespace) -> Params:
    from pipelines.cli.options import setup

    return setup(ns.params, ns.set, False, experiment=ns.experiment)


def run_rank(ns: argparse.Namespace) -> int:
    """One rank: join the group, train (rank 0: the whole stage), report rank 0's result or error."""
    from pipelines.config import Params

    die_with_parent()
    job: dict[str, Any] = json.loads(Path(ns.job).read_text()) if ns.job else {"kind": "stage"}
    if job.get("cwd"):
        os.chdir(job["cwd"])  # params paths are relative to the project root
    result_file = job.get("result")
    init_process_group()
    outcome: dict[str, Any]
    try:
        if job["kind"] == "loop":
            summary = _run_loop(job["args"])
        else:
            params = Params.model_validate(job["params"]) if "params" in job else _params_from_cli(ns)
            if is_main():
                from pipelines.stages.train import run_train

                summary = run_train(params, job.get("run_id"))
            else:
                summary = _train_other_rank(params)
        outcome = {"summary": summary}
        code = 0
    except Exception as exc:
        outcome = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        code = 1
        if not result_file:
            raise
        if not is_main():  # this rank may fail first (torchrun then stops rank 0): its error is the one to report
            Path(f"{result_file}.rank{rank()}").write_text(json.dumps(outcome, default=str))
            raise
    main_rank = is_main()
    if main_rank and result_file:
        Path(result_file).write_text(json.dumps(outcome, default=str))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return code if main_rank else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.distributed", description="One rank of a distributed training (run by torchrun)."
    )
    parser.add_argument("--job", help="Job file written by the launcher (single host).")
    parser.add_argument("--params", "-p", default="params.yaml", help="Params file (multi-node: every node).")
    parser.add_argument("--experiment", "-e", default=None)
    parser.add_argument("--set", "-S", action="append", default=[], help="section.key=value (repeatable).")
    ns = parser.parse_args(argv)
    started = time.perf_counter()
    code = run_rank(ns)
    print(f"rank {os.environ.get('RANK', '0')} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
