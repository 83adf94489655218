"""Credentials are never recorded: one place that hides them, and one that refuses them in settings.

Everything that records settings or talks to the user (MLflow params and tags, lineage tags and reports,
`nlpops changes`, the run summary, stage summaries, error messages, `services` state and output, and every log
record once `install_log_redaction()` ran) passes its text through this module:

- `redact_url(url)`: `postgresql://postgres:s3cret@host/db` → `postgresql://postgres:***@host/db`; secret query
  parameters (`?password=`, `token=`, `X-Amz-Signature=`, `sig=` …) keep their name and lose their value.
- `redact_text(text)`: the same for every URL inside free text, plus libpq `password=...` key/value pairs.
- `redact_settings(obj)`: the same through nested dicts and lists; a value under a secret-named key
  (`password`, `api_key`, `client_secret` …) becomes `***`.

Settings files and `--set` must not hold a credential at all (they end up in git, dvc.lock, shell history and
Prefect's flow-run parameters): `refuse_embedded_credentials` turns one into a single-line ConfigError that names
the key and the supported way to pass it. A user name alone (`postgresql://postgres@host/db`) is no credential.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any

from pipelines.errors import ConfigError

MASK = "***"

# scheme://user:password@host — the password runs up to the last '@' before the host (unencoded '@' or '/' in a
# password still hide), the host part has no '@' and ends at a path, query, space or the end of the text.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^\s:/@]*)):(?P<password>[^\s]*?)@(?=[^\s@/]*(?:[/?#\s]|$))"
)
# ?name=value / &name=value / ;name=value (query strings, SAS tokens, presigned URLs)
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&\s#?;]+)=)(?P<value>[^&\s#;]*)")
# libpq key/value connection strings: host=db user=app password=... (pairs separated by spaces; in a query string
# `&password=` is _QUERY_PARAM's)
_DSN_PASSWORD = re.compile(
    r"(?<![^\s'\"(,])(?P<head>(?:password|passwd|pwd)\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s'\"]+)"
)
# A setting, tag, query parameter or dict key whose *name* says its value is a credential.
_SECRET_NAME = re.compile(
    r"(?i)^(?:[\w.-]*[_.-])?(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
    r"|private[_-]?key|credentials?|signature|sig|auth)$"
)
# Query parameters that are credentials by convention though their name alone is generic (Google's ?key=).
_SECRET_QUERY_NAMES = {"key"}


def is_secret_name(name: str) -> bool:
    """True for names such as password, api_key, client_secret, X-Amz-Security-Token, sig."""
    return bool(_SECRET_NAME.match(name.strip()))


def _mask_query(match: re.Match[str]) -> str:
    name, value = match["name"], match["value"]
    if value and value != MASK and (is_secret_name(name) or name.lower() in _SECRET_QUERY_NAMES):
        return match["head"] + MASK
    return match[0]


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL in it (and libpq password= pairs) replaced by ***."""
    if not text or ("@" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["password"] else m[0], text)
    text = _QUERY_PARAM.sub(_mask_query, text)
    return _DSN_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def redact_url(url: str) -> str:
    """`postgresql://postgres:s3cret@host/db` → `postgresql://postgres:***@host/db`; URLs without credentials
    come back unchanged."""
    return redact_text(url)


def redact_settings(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples/strings with every credential hidden (other values unchanged)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {
            k: (MASK if isinstance(k, str) and is_secret_name(k) and v not in (None, "") else redact_settings(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact_settings(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------ refusing settings


def embedded_credential(value: str) -> str | None:
    """What credential a setting's value carries ('a password', 'a token= query parameter', ...), or None."""
    for match in _USERINFO.finditer(value):
        if match["password"]:
            return "a password in its URL"
    for match in _QUERY_PARAM.finditer(value):
        name = match["name"]
        if match["value"] and (is_secret_name(name) or name.lower() in _SECRET_QUERY_NAMES):
            return f"a credential in its URL ({name}=)"
    if _DSN_PASSWORD.search(value):
        return "a password= field"
    return None


def find_embedded_credentials(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, what) for every string in nested settings that carries a credential."""
    found: list[tuple[str, str]] = []
    if isinstance(data, Mapping):
        for k, v in data.items():
            found += find_embedded_credentials(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            found += find_embedded_credentials(v, f"{prefix}[{i}]")
    elif isinstance(data, str):
        what = embedded_credential(data)
        if what:
            found.append((prefix, what))
    return found


GENERIC_HINT = "pass it through the environment or a credentials file instead (README: Credentials)"


def refuse_embedded_credentials(data: Any, source: str, hints: Mapping[str, str] | None = None) -> None:
    """Raise one ConfigError line when settings from `source` (a params file, '--set') hold a credential.

    The line names the key, shows the value redacted and says how to pass the credential (`hints[key]`)."""
    found = find_embedded_credentials(data)
    if not found:
        return
    key, what = found[0]
    value: Any = data
    for part in key.replace("[", ".[").split("."):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    hint = (hints or {}).get(key, GENERIC_HINT)
    more = f" (and {len(found) - 1} more: {', '.join(k for k, _ in found[1:])})" if len(found) > 1 else ""
    raise ConfigError(
        f"{source}: {key} holds {what} ({redact_text(str(value))}){more}; credentials never go in params.yaml or "
        f"--set (they would be logged and committed): {hint}. Nothing was run."
    )


# ------------------------------------------------------------------------------------------------- logging


class _RedactingRecordFactory:
    """Wraps the log record factory: every record, from any logger, at any level, to any handler (console,
    file, JSON, Prefect's API handler), carries its message and traceback already redacted."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it for logging's own error report
            return record
        safe = redact_text(message)
        if safe != message:
            record.msg, record.args = safe, ()
        if record.exc_info and record.exc_info[0] is not None:
            formatted = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            safe_tb = redact_text(formatted)
            if safe_tb != formatted:
                record.exc_text = safe_tb  # Formatter.format uses exc_text when it is already set
        return record


def install_log_redaction() -> None:
    """Redact credentials in every log record created from now on in this process (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(factory))
