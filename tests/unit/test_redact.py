"""Credentials are hidden wherever settings are recorded, and refused in params.yaml / --set (pipelines/redact.py)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import yaml

from pipelines.config import SECRET_SETTINGS, Params, load_params
from pipelines.errors import ConfigError
from pipelines.redact import (
    embedded_credential,
    install_log_redaction,
    redact_settings,
    redact_text,
    redact_url,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cretPW"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:s3cretPW@127.0.0.1:5432/test", "postgresql://postgres:***@127.0.0.1:5432/test"),
        ("postgresql+psycopg2://app:s3cretPW@db:5432/mlflow", "postgresql+psycopg2://app:***@db:5432/mlflow"),
        ("postgresql://app:p@ss-s3cretPW@db/x", "postgresql://app:***@db/x"),  # an unencoded '@' in the password
        ("http://nlpops:s3cretPW@mlflow.internal:5000", "http://nlpops:***@mlflow.internal:5000"),
        ("https://u:s3cretPW@host/api/2.0?x=1", "https://u:***@host/api/2.0?x=1"),
        ("redis://:s3cretPW@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "postgresql://db/x?user=app&password=s3cretPW&sslmode=require",
            "postgresql://db/x?user=app&password=***&sslmode=require",
        ),
        ("https://host/f.csv?token=s3cretPW", "https://host/f.csv?token=***"),
        ("https://host/f?access_token=s3cretPW&page=2", "https://host/f?access_token=***&page=2"),
        (
            "https://bucket.s3/k?X-Amz-Credential=AKIA/s3cretPW&X-Amz-Signature=s3cretPW&X-Amz-Expires=60",
            "https://bucket.s3/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://acct.blob/c/f?sv=2020&sig=s3cretPW", "https://acct.blob/c/f?sv=2020&sig=***"),
        ("https://maps.example/api?key=s3cretPW&q=x", "https://maps.example/api?key=***&q=x"),
    ],
)
def test_redact_url_hides_passwords_and_tokens(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)
    assert redact_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/test",  # a user name alone is no credential
        "postgresql://127.0.0.1:5432/test?sslmode=require&connect_timeout=10",
        "http://127.0.0.1:5000",
        "http://127.0.0.1:4200/api",
        "sqlite:////home/u/project/.nlpops/mlflow.db",
        "file:///home/u/project/.nlpops/mlartifacts",
        "models:/nlpops-demo-sentiment/3",
        "s3://mlflow/artifacts",
        "https://host/x?cache_key=abc&tokens=5&page=2",
        "data/raw/reviews.csv",
        "",
    ],
)
def test_urls_without_credentials_are_unchanged(url: str) -> None:
    assert redact_url(url) == url
    assert embedded_credential(url) is None


def test_redact_text_finds_urls_inside_messages_and_libpq_passwords() -> None:
    message = (
        "promotion lock: cannot connect to 'postgresql://postgres:s3cretPW@db:5432/test': timeout; "
        "also tried http://u:s3cretPW@h:5000/api and host=db user=app password=s3cretPW dbname=x"
    )
    out = redact_text(message)
    assert SECRET not in out
    assert "'postgresql://postgres:***@db:5432/test'" in out
    assert "http://u:***@h:5000/api" in out and "password=*** dbname=x" in out
    assert "host=db user=app" in out
    assert redact_text("see http://h:5000/x and mail me@example.org") == "see http://h:5000/x and mail me@example.org"


def test_redact_settings_walks_nested_data_and_secret_named_keys() -> None:
    settings = {
        "register": {"lock_url": "postgresql://postgres:s3cretPW@db/test", "lock": "postgres", "lock_timeout_s": 300},
        "servers": [{"url": "http://u:s3cretPW@h"}, ("https://h/?token=s3cretPW",)],
        "password": "s3cretPW",
        "client_secret": "s3cretPW",
        "api_key": None,
        "tokenise.cache_key": "abc123",
        "train.max_train_rows": 10,
    }
    out = redact_settings(settings)
    assert SECRET not in json.dumps(out)
    assert out["register"] == {
        "lock_url": "postgresql://postgres:***@db/test",
        "lock": "postgres",
        "lock_timeout_s": 300,
    }
    assert out["servers"] == [{"url": "http://u:***@h"}, ("https://h/?token=***",)]
    assert out["password"] == out["client_secret"] == "***"
    assert out["api_key"] is None
    assert out["tokenise.cache_key"] == "abc123" and out["train.max_train_rows"] == 10
    assert settings["password"] == SECRET  # the input is not changed


# ------------------------------------------------------------------------------------------- refusing settings


def _params_file(tmp_path: Path, **register: object) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["register"].update(register)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_password_in_params_file_is_refused_with_one_line_naming_key_and_env_var(tmp_path: Path) -> None:
    path = _params_file(tmp_path, lock="postgres", lock_url="postgresql://postgres:s3cretPW@127.0.0.1:5432/test")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: register.lock_url holds a password")
    assert "NLPOPS_LOCK_URL" in message and "PGPASSWORD" in message
    assert "postgresql://postgres:***@127.0.0.1:5432/test" in message
    assert SECRET not in message and "\n" not in message


def test_password_in_set_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", ["register.lock_url=postgresql://postgres:s3cretPW@db/test"])
    message = str(err.value)
    assert message.startswith("--set: register.lock_url holds a password") and "NLPOPS_LOCK_URL" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize(
    "override",
    [
        "data.path=https://u:s3cretPW@files.example/reviews.csv",
        "data.path=https://files.example/reviews.csv?token=s3cretPW",
        "model.path=https://hub.example/m?X-Amz-Signature=s3cretPW",
        "register.lock_url=host=db user=app password=s3cretPW",
    ],
)
def test_any_setting_with_a_credential_is_refused(override: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", [override])
    key = override.split("=", 1)[0]
    assert str(err.value).startswith(f"--set: {key} holds ")
    assert SECRET not in str(err.value)


def test_password_less_lock_url_is_accepted(tmp_path: Path) -> None:
    params = load_params(_params_file(tmp_path, lock_url="postgresql://postgres@127.0.0.1:5432/test"))
    assert params.register_.lock_url == "postgresql://postgres@127.0.0.1:5432/test"


def test_secret_bearing_settings_are_not_in_the_params_hashes(tmp_path: Path) -> None:
    base = load_params(REPO / "params.yaml")
    moved = load_params(REPO / "params.yaml", ["register.lock_url=postgresql://postgres@other-host:5432/locks"])
    assert "register.lock_url" in SECRET_SETTINGS
    assert moved.params_hash() == base.params_hash()
    assert moved.section_hash("register") == base.section_hash("register")
    assert "lock_url" not in base.section("register")
    assert moved.register_.lock_url == "postgresql://postgres@other-host:5432/locks"  # still used to take the lock
    other = load_params(REPO / "params.yaml", ["register.champion_alias=prod"])
    assert other.params_hash() != base.params_hash()  # the other register settings still count
    assert other.section_hash("register") != base.section_hash("register")


def test_flattened_params_logged_to_mlflow_are_redacted() -> None:
    from pipelines.tracking import flatten

    params = Params.model_validate(
        {"data": {"path": "x.csv"}, "register": {"lock_url": "postgresql://postgres:s3cretPW@db/test"}}
    )  # built directly, as a library user could: the CLI path refuses it before this
    logged = redact_settings(flatten("", params.to_dict()))
    assert logged["register.lock_url"] == "postgresql://postgres:***@db/test"
    assert SECRET not in json.dumps(logged)


# ------------------------------------------------------------------------------------------------- logging


def test_log_records_are_redacted_at_every_level_and_in_tracebacks() -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent: one wrapper
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("nlpops.test_redact")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        url = "postgresql://postgres:s3cretPW@db:5432/test"
        logger.debug("connecting to %s", url)
        logger.info(f"lock url {url}")
        logger.warning("tracking %s", {"uri": "http://u:s3cretPW@h:5000"})
        try:
            raise RuntimeError(f"cannot connect to {url}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    assert "DEBUG connecting to postgresql://postgres:***@db:5432/test" in out
    assert "INFO lock url postgresql://postgres:***@db:5432/test" in out
    assert "http://u:***@h:5000" in out
    assert "RuntimeError: cannot connect to postgresql://postgres:***@db:5432/test" in out


def test_prefect_json_log_format_is_redacted() -> None:
    from prefect.logging.formatters import JsonFormatter

    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("default", None, "%"))
    logger = logging.getLogger("nlpops.test_redact_json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("lock on %s", "postgresql://postgres:s3cretPW@db/test")
    finally:
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert SECRET not in stream.getvalue()
    assert "postgresql://postgres:***@db/test" in record["msg"]


# ------------------------------------------------------------------------------------------------ services


def test_services_keep_the_postgres_password_off_the_command_line_and_out_of_errors(tmp_path: Path) -> None:
    from pipelines.services import ServicesConfig, _commands, _postgres_error

    cfg = ServicesConfig(tmp_path, postgres_url="postgresql://postgres:s3cretPW@127.0.0.1:5432")
    commands = _commands(cfg)
    mlflow_cmd, mlflow_env = commands["mlflow"]
    assert SECRET not in " ".join(mlflow_cmd) and SECRET not in " ".join(commands["prefect"][0])
    assert (
        mlflow_env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://postgres:s3cretPW@127.0.0.1:5432/nlpops_mlflow"
    )
    error = str(_postgres_error(cfg, RuntimeError("connection refused")))
    assert "postgresql://postgres:***@127.0.0.1:5432" in error and SECRET not in error


def test_services_up_refuses_a_password_on_the_command_line() -> None:
    from pipelines.cli.ops import services_up_cmd

    with pytest.raises(ConfigError) as err:
        services_up_cmd(postgres_url="postgresql://postgres:s3cretPW@db:5432", mlflow_port=None, prefect_port=None)
    assert "PGPASSWORD" in str(err.value) and "NLPOPS_POSTGRES_URL" in str(err.value)
    assert "postgresql://postgres:***@db:5432" in str(err.value) and SECRET not in str(err.value)
