from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import clean_env

REPO = Path(__file__).resolve().parents[2]
NLPOPS = Path(sys.executable).parent / "nlpops"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NLPOPS), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=clean_env())


def test_help_lists_every_stage_and_verb() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in (
        "run",
        "validate",
        "clean",
        "tokenise",
        "train",
        "evaluate",
        "export",
        "register",
        "predict",
        "models",
        "data",
        "serve",
        "tune",
    ):
        assert command in done.stdout
    train_help = run("train", "--help").stdout
    assert "--set" in train_help and "--nproc" in train_help


def test_bad_setting_is_one_line_and_exit_2() -> None:
    done = run("train", "--set", "train.lr=1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'train.lr'" in lines[0]
    assert "Traceback" not in done.stderr


def test_stage_before_its_inputs_exist_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  path: x.csv\n")
    done = run("train", cwd=tmp_path)
    assert done.returncode == 2
    assert "run `nlpops tokenise`" in done.stderr and "Traceback" not in done.stderr


def test_predict_without_a_champion_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  path: x.csv\n")
    done = run("predict", "hello", cwd=tmp_path)
    assert done.returncode == 2
    assert "no version with alias 'champion'" in done.stderr and "Traceback" not in done.stderr


def test_run_in_a_fresh_folder_starts_prefect_and_names_the_missing_file(tmp_path: Path) -> None:
    # No .nlpops/ yet: the state dir (and Prefect's home inside it) must be created before Prefect starts.
    (tmp_path / "params.yaml").write_text("data:\n  path: missing.csv\n")
    done = run("run", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: missing.csv: file not found"
    assert (tmp_path / ".nlpops" / "prefect").is_dir()


def test_every_verb_failure_reaches_the_shell_as_a_non_zero_exit(tmp_path: Path) -> None:
    """Regression: `nlpops services status` exited 0 with both servers down (typer.Exit(3) was swallowed under
    standalone_mode=False). Each verb's failure must reach the shell, with one line and no traceback."""
    (tmp_path / "params.yaml").write_text("data:\n  path: missing.csv\nproject:\n  registered_model: nobody\n")
    cases = [
        (("services", "status"), 3),  # nothing started in this project
        (("predict", "hello"), 2),  # no champion
        (("promote", "1", "--reason", "try"), 2),  # no such model
        (("rollback", "--reason", "try"), 2),
        (("data", "add", "nope.csv"), 2),
        (("validate",), 2),  # missing data file
        (("models", "list", "-e", "absent"), 2),  # no such experiment
    ]
    for args, code in cases:
        done = run(*args, cwd=tmp_path)
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        if code == 2:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)


def test_the_console_script_runs_exit_handlers_then_skips_the_teardown(tmp_path: Path) -> None:
    """entry(): thread exit hooks and atexit handlers run (servers stop, logs flush), output is flushed, the exit
    code is main()'s; then the process ends without the interpreter's teardown (NLPOPS_SLOW_EXIT=1 keeps it)."""
    marker = tmp_path / "handlers.txt"
    script = (
        "import atexit, sys, threading; from pipelines import cli\n"
        f"log = lambda what: open({str(marker)!r}, 'a').write(what + '\\n')\n"
        "threading._register_atexit(lambda: log('thread-hook'))\n"
        "atexit.register(lambda: log('atexit'))\n"
        "sys.argv = ['nlpops', *sys.argv[1:]]\n"
        "cli.entry()\n"
        "log('not reached')\n"
    )
    for env_extra, args, code in (
        ({}, ["--help"], 0),
        ({}, ["validate", "--params", str(tmp_path / "missing.yaml")], 2),
        ({"NLPOPS_SLOW_EXIT": "1"}, ["validate", "--params", str(tmp_path / "missing.yaml")], 2),
    ):
        marker.unlink(missing_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=tmp_path,
            env=clean_env(**env_extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == code, done.stderr
        assert marker.read_text().splitlines() == ["thread-hook", "atexit"]
        assert ("Usage" in done.stdout) if code == 0 else ("error:" in done.stderr and "missing.yaml" in done.stderr)


def test_the_cli_turns_mlflow_telemetry_off_unless_the_user_set_it(tmp_path: Path) -> None:
    """Prefect's and Great Expectations' telemetry are off by default; MLflow's too (it reads DO_NOT_TRACK only as
    "true", so DO_NOT_TRACK=1 alone left its sender threads running). A user's own setting wins."""
    code = (
        "import sys; from pipelines.cli.options import setup; "
        f"setup({str(REPO / 'params.yaml')!r}, ['project.state_dir={tmp_path / 'state'}'], False); "
        "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY; print(MLFLOW_DISABLE_TELEMETRY.get())"
    )
    for user, expected in ((None, "True"), ("false", "False")):
        env = clean_env(**({"MLFLOW_DISABLE_TELEMETRY": user} if user else {}))
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected
