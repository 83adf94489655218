"""kill -9 in the middle of training, rerun, and end with the same model and metrics as a run never interrupted.

Guarantee on CPU: with the same seed, thread count and library versions the resumed run replays the same batches
with the same dropout masks, so weights and metrics are bitwise identical; the test allows 1e-6 (absolute).
"""

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

pytestmark = pytest.mark.integration

TOLERANCE = 1e-6
EPOCHS = 4

STEPS_PER_EPOCH = 18  # 140 train rows, batch 8
CHECKPOINT_EVERY = 4
# Freeze before optimiser step 23: steps 1-22 are done, the last checkpoint is step 20 (epoch 2, batch 2) and two
# steps after it are lost. The worker writes a marker file and blocks there; the test kills it once it sees the
# file, so the kill lands at the same point on any machine (no sleeps, no timing).
FREEZE_AT_STEP = 23

WORKER = """
import json, sys, threading
from pathlib import Path
import torch
from pipelines.config import ModelConfig, TrainConfig
from pipelines.tasks import get_task
from pipelines.train import train_model

tok, model_path, out, ckpt, freeze_at, result = sys.argv[1:7]
freeze_at, marker = int(freeze_at), Path(out + ".frozen")
original, calls = torch.optim.AdamW.step, [0]
def step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == freeze_at:  # wait here to be killed
        marker.write_text(str(calls[0]))
        threading.Event().wait()
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
cfg = TrainConfig(epochs=@EPOCHS@, learning_rate=5e-3, batch_size=8, warmup_ratio=0.2, early_stopping_patience=0,
                  checkpoint_every_steps=@EVERY@, num_threads=1, seed=11)
summary = train_model(Path(tok), {0: "negative", 1: "positive"}, Path(model_path), Path(out), cfg,
                      ModelConfig(dropout=0.2), get_task("text_classification"), 0, checkpoint_dir=Path(ckpt))
Path(result).write_text(json.dumps(summary))
""".replace("@EPOCHS@", str(EPOCHS)).replace("@EVERY@", str(CHECKPOINT_EVERY))


@pytest.fixture
def tokenised(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return tokenise_sentiment(tmp_path, tiny_model_dir, 180, seed=5, validation=slice(140, None), test=slice(140, None))


def _start(tmp: Path, tok: Path, model: Path, name: str, freeze_at: int = 0) -> tuple[subprocess.Popen, Path]:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    result = tmp / f"{name}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tok), str(model), str(tmp / f"{name}-model"), str(tmp / f"{name}-ckpt"),
         str(freeze_at), str(result)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, result


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, tokenised: Path, tiny_model_dir: Path
) -> None:
    proc, result = _start(tmp_path, tokenised, tiny_model_dir, "crashed", freeze_at=FREEZE_AT_STEP)
    ckpt_dir, marker = tmp_path / "crashed-ckpt", tmp_path / "crashed-model.frozen"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the marker, with a deadline
    assert marker.exists(), "the worker never reached the kill point:\n" + (
        proc.stdout.read() if proc.poll() is not None and proc.stdout else "(timed out)"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not result.exists()
    assert (tmp_path / "crashed-model" / "nlpops_checkpoint.json").is_file(), "epoch 1's best model is missing"
    assert list(ckpt_dir.glob("*.ckpt.pt")), "no checkpoint survived the kill"

    resumed_proc, _ = _start(tmp_path, tokenised, tiny_model_dir, "crashed")
    out, _ = resumed_proc.communicate(timeout=300)
    assert resumed_proc.returncode == 0, out
    resumed = json.loads(result.read_text())
    # From the last checkpoint before the kill: mid-epoch 2, so the position in the data is restored too.
    last = (FREEZE_AT_STEP - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    assert resumed["resumed_from"] == {"epoch": 2, "batch": last - STEPS_PER_EPOCH, "step": last}
    assert not list(ckpt_dir.glob("*.ckpt.pt")), "the checkpoint is removed once training finishes"

    clean_proc, clean_result = _start(tmp_path, tokenised, tiny_model_dir, "uninterrupted")
    out, _ = clean_proc.communicate(timeout=300)
    assert clean_proc.returncode == 0, out
    clean = json.loads(clean_result.read_text())
    assert clean["resumed_from"] is None

    assert resumed["steps"] == clean["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["best_epoch"] == clean["best_epoch"]
    assert len(resumed["history"]) == len(clean["history"]) == EPOCHS
    worst = 0.0
    for a, b in zip(resumed["history"], clean["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate"):
            worst = max(worst, abs(a[key] - b[key]))
    assert worst <= TOLERANCE, f"metrics differ by {worst}"
    wa, wb = _weights(tmp_path / "crashed-model"), _weights(tmp_path / "uninterrupted-model")
    weight_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert weight_diff <= TOLERANCE, f"weights differ by {weight_diff}"
    print(f"resumed from {resumed['resumed_from']}; max metric diff {worst}; max weight diff {weight_diff}")
