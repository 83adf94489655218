"""Distributed training killed mid-epoch (SIGKILL to torchrun and both ranks) resumes from rank 0's checkpoint and
ends where an uninterrupted 2-process run ends: every rank gets back its own RNG state and partial epoch loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tokenise_sentiment

from pipelines import distributed
from pipelines.config import ModelConfig, TrainConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # three 2-process trainings: about 35 s

ID2LABEL = {0: "negative", 1: "positive"}
STEPS_PER_EPOCH = 18  # 140 train rows, global batch 8
CHECKPOINT_EVERY = 4
FREEZE_AT_STEP = 23  # rank 0 blocks before optimiser step 23; the last checkpoint is step 20

RANK = """
import os, sys, threading
from pathlib import Path
import torch
freeze_at, marker = int(os.environ["FREEZE_AT"]), Path(os.environ["FREEZE_MARKER"])
original, calls = torch.optim.AdamW.step, [0]
def step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == freeze_at and os.environ.get("RANK") == "0":  # rank 1 then waits at the next all-reduce
        marker.write_text(str(calls[0]))
        threading.Event().wait()
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
from pipelines.distributed import main
sys.exit(main())
"""


def _cfg() -> TrainConfig:
    return TrainConfig(
        epochs=3, learning_rate=5e-3, batch_size=8, warmup_ratio=0.2, early_stopping_patience=0, seed=11,
        checkpoint_every_steps=CHECKPOINT_EVERY, num_threads=1, processes=2,
    )  # fmt: skip


def test_killed_distributed_training_resumes_like_an_uninterrupted_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    tok = tokenise_sentiment(tmp_path, tiny_model_dir, 180, seed=5, validation=slice(140, None), test=slice(140, None))
    val = tok.parent / "clean" / "validation.parquet"
    model_cfg = ModelConfig(dropout=0.2)  # dropout on: the ranks' RNG streams must be restored too
    args = (tok, ID2LABEL, tiny_model_dir)
    job = distributed.loop_job(
        *args, tmp_path / "crashed", _cfg(), model_cfg, "text_classification", 0, tmp_path / "ckpt", val
    )
    job_file, marker = tmp_path / "job.json", tmp_path / "frozen"
    job_file.write_text(json.dumps({**job, "result": str(tmp_path / "killed.json")}))
    (tmp_path / "rank.py").write_text(RANK)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "FREEZE_AT": str(FREEZE_AT_STEP), "FREEZE_MARKER": str(marker), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    command += ["--max-restarts=0", str(tmp_path / "rank.py"), "--job", str(job_file)]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait(timeout=30)
    assert list((tmp_path / "ckpt").glob("*.ckpt.pt")), "rank 0 wrote no checkpoint"

    resumed = distributed.train_model_distributed(
        2, *args, tmp_path / "crashed", _cfg(), model_cfg, "text_classification", 0, tmp_path / "ckpt", val
    )
    last = (FREEZE_AT_STEP - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    assert resumed["resumed_from"] == {"epoch": 2, "batch": last - STEPS_PER_EPOCH, "step": last}
    clean = distributed.train_model_distributed(
        2, *args, tmp_path / "clean-model", _cfg(), model_cfg, "text_classification", 0, tmp_path / "ckpt2", val
    )
    assert clean["resumed_from"] is None and resumed["steps"] == clean["steps"] == 3 * STEPS_PER_EPOCH
    for a, b in zip(resumed["history"], clean["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "learning_rate"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "crashed" / "model.safetensors"))
    wb = load_file(str(tmp_path / "clean-model" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
