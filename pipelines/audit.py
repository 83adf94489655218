"""Lineage audit of a registered model version: the chain from raw data to alias history, and proof of each link.

The chain: raw data (path + DVC md5) → validation report → cleaned data hash → tokenised cache key → training run
(params, git commit, seed, library versions, start/end) → metrics and gate decision → ONNX file hash → registered
version → alias history. Facts come from the version's tags (written at registration, see runner._lineage_tags and
run_register) and from its training run in MLflow.

With `verify=True` each link is re-hashed from what is still available (the data file or DVC's cache, the run's
logged artifacts, the git object database, the ONNX artifact downloaded from the registry) and marked:
verified (re-computed hash equals the recorded one), changed (it differs), missing (nothing left to check, or
nothing was recorded). Without it every link is `recorded`.
"""

from __future__ import annotations

import html
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.config import stable_hash
from pipelines.errors import RegistryError
from pipelines.hashing import file_digest, file_md5
from pipelines.redact import redact_settings

VERIFIED, CHANGED, MISSING, RECORDED = "verified", "changed", "missing", "recorded"


@dataclass
class Link:
    step: str
    facts: dict[str, Any]
    status: str = RECORDED
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def _ts(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _short(value: Any, n: int = 12) -> str:
    text = str(value)
    return text[:n] + "…" if len(text) > n + 1 else text


def _run_artifact(client: Any, run_id: str, path: str, dst: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception:
        return None


def resolve_version(name: str, ref: str) -> Any:
    """A version number, or an alias name (champion, challenger)."""
    from pipelines.registry import alias_version, get_version

    if ref.lstrip("v").isdigit():
        return get_version(name, ref.lstrip("v"))
    version = alias_version(name, ref)
    if version is None:
        raise RegistryError(f"lineage: {name!r} has no version or alias {ref!r} (see `nlpops models list`)")
    return version


def _dvc_cache_has(md5: str, root: Path) -> bool:
    cache = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return cache.is_file() and file_md5(cache) == md5


def build_lineage(name: str, ref: str, verify: bool = False, root: str | Path = ".") -> dict[str, Any]:
    """The lineage report of one version as plain data (what --json prints and --html renders)."""
    from mlflow import MlflowClient

    from pipelines.registry import alias_history

    root = Path(root).resolve()
    client = MlflowClient()
    mv = resolve_version(name, ref)
    version = str(mv.version)
    tags = dict(mv.tags or {})
    model = client.get_registered_model(name)
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == version)
    try:
        run = client.get_run(mv.run_id) if mv.run_id else None
    except Exception:
        run = None
    with tempfile.TemporaryDirectory(prefix="nlpops-lineage-") as tmp:
        work = Path(tmp)
        links = [
            _raw_data(tags, verify, root),
            _validation(tags, run, client, verify, work),
            _cleaned(tags, run, client, verify, work, root),
            _tokenised(tags, run, client, verify, work),
            _training(tags, run, verify, root),
            _metrics(tags, run, client, verify, work),
            _onnx(tags, name, version, verify, work),
            _registered(mv, tags, aliases, verify),
            _history(name, version, alias_history, aliases),
        ]
    counts = {s: sum(1 for link in links if link.status == s) for s in (VERIFIED, CHANGED, MISSING, RECORDED)}
    return redact_settings(
        {  # runs logged before credentials were refused may still hold one
            "model": name,
            "version": version,
            "aliases": aliases,
            "verified": verify,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": counts,
            "links": [asdict(link) for link in links],
        }
    )


# ------------------------------------------------------------------------------------------------ the links


def _raw_data(tags: dict[str, str], verify: bool, root: Path) -> Link:
    path, md5 = tags.get("data.path"), tags.get("data.md5")
    link = Link("raw data", {"path": path, "md5": md5, "dvc_tracked": tags.get("data.dvc_tracked") == "true"})
    if not verify:
        return link
    if not path or not md5 or md5 == "None":
        link.status, link.detail = MISSING, "no data path/md5 recorded at registration"
        return link
    file = root / path
    if file.is_file():
        current = file_md5(file)
        if current == md5:
            link.status, link.detail = VERIFIED, f"{path}: md5 re-computed, matches"
        elif _dvc_cache_has(md5, root):
            link.status = VERIFIED
            link.detail = f"{path} now holds other data (md5 {_short(current)}); the recorded version is in DVC's cache"
        else:
            link.status, link.detail = CHANGED, f"{path}: md5 is now {current}, recorded {md5}"
    elif _dvc_cache_has(md5, root):
        link.status, link.detail = VERIFIED, f"{path} not checked out; DVC's cache holds md5 {md5} (re-hashed)"
    else:
        link.status, link.detail = MISSING, f"{path} is gone and DVC's local cache has no md5 {md5} (try `dvc pull`)"
    return link


def _validation(tags: dict[str, str], run: Any, client: Any, verify: bool, work: Path) -> Link:
    link = Link("validation", {"report_sha256": tags.get("data.validation_sha256") or None})
    report = _run_artifact(client, run.info.run_id, "data/report.json", work / "validation") if run else None
    if report is not None:
        data = json.loads(report.read_text())
        files = data.get("files") or []
        link.facts.update(
            success=data.get("success"),
            suite=data.get("suite"),
            checks=sum(len(f.get("checks") or []) for f in files),
            files=[f.get("path") for f in files],
        )
    if not verify:
        return link
    recorded = link.facts["report_sha256"]
    if report is None:
        link.status, link.detail = MISSING, "the run has no data/report.json artifact"
    elif not recorded:
        link.status, link.detail = MISSING, "report logged on the run, but its hash was not recorded at registration"
    elif file_digest(report) == recorded:
        link.status, link.detail = VERIFIED, "run artifact data/report.json re-hashed, matches"
    else:
        link.status, link.detail = CHANGED, "run artifact data/report.json differs from the recorded hash"
    return link


def _cleaned(tags: dict[str, str], run: Any, client: Any, verify: bool, work: Path, root: Path) -> Link:
    link = Link(
        "cleaned data", {"clean_sha256": tags.get("data.clean_sha256"), "test_sha256": tags.get("data.test_sha256")}
    )
    summary = _run_artifact(client, run.info.run_id, "data/summary.json", work / "clean") if run else None
    files: dict[str, str] = {}
    if summary is not None:
        data = json.loads(summary.read_text())
        files = data.get("sha256") or {}
        link.facts.update(rows_out=data.get("rows_out"), splits=data.get("splits"), files=files)
    if not verify:
        return link
    if summary is None:
        link.status, link.detail = MISSING, "the run has no data/summary.json artifact"
        return link
    if stable_hash(files) != link.facts["clean_sha256"]:
        link.status, link.detail = CHANGED, "run artifact data/summary.json no longer hashes to data.clean_sha256"
        return link
    link.status, link.detail = VERIFIED, "split hashes in the run's clean summary re-hashed, match"
    local = root / "artifacts" / "clean"
    if local.is_dir():
        same = all((local / f).is_file() and file_digest(local / f) == h for f, h in files.items())
        link.notes.append(
            "local artifacts/clean holds these exact splits" if same else "local artifacts/clean is from other data"
        )
    return link


def _tokenised(tags: dict[str, str], run: Any, client: Any, verify: bool, work: Path) -> Link:
    link = Link("tokenised cache", {"cache_key": tags.get("tokenise.cache_key")})
    manifest = _run_artifact(client, run.info.run_id, "data/tokenise_manifest.json", work / "tok") if run else None
    if manifest is not None:
        data = json.loads(manifest.read_text())
        link.facts.update({k: data.get(k) for k in ("tokenizer", "tokenizer_sha256", "max_length") if k in data})
    if not verify:
        return link
    if manifest is None:
        link.status, link.detail = MISSING, "the run has no data/tokenise_manifest.json artifact"
    elif json.loads(manifest.read_text()).get("cache_key") == link.facts["cache_key"]:
        link.status, link.detail = VERIFIED, "cache key in the run's tokenise manifest matches"
    else:
        link.status, link.detail = CHANGED, "the run's tokenise manifest names another cache key"
    return link


def _training(tags: dict[str, str], run: Any, verify: bool, root: Path) -> Link:
    commit = tags.get("git.commit")
    facts: dict[str, Any] = {
        "run_id": tags.get("run_id") or (run.info.run_id if run else None),
        "git_commit": commit,
        "git_dirty": tags.get("git.dirty") == "true",
        "seed": tags.get("train.seed"),
        "params_hash": tags.get("params.hash"),
        "library_versions": {
            k.removeprefix("version."): v for k, v in sorted(tags.items()) if k.startswith("version.")
        },
    }
    if run is not None:
        facts.update(
            status=run.info.status,
            start=_ts(run.info.start_time),
            end=_ts(run.info.end_time),
            base_model=run.data.tags.get("model.base"),
            params=dict(sorted(run.data.params.items())),
        )
    link = Link("training run", facts)
    if not verify:
        return link
    if run is None:
        link.status, link.detail = MISSING, f"training run {facts['run_id']} is not in the tracking store"
        return link
    if not commit or commit == "unknown":
        link.status, link.detail = MISSING, "no git commit was recorded (trained outside a git repository)"
        return link
    try:
        found = (
            subprocess.run(
                ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        found = False
    if found:
        link.status, link.detail = VERIFIED, f"commit {_short(commit)} is in this repository"
        if facts["git_dirty"]:
            link.notes.append("the working tree had uncommitted changes at training time: the commit is not all of it")
    else:
        link.status, link.detail = MISSING, f"commit {_short(commit)} is not in this repository (`git fetch`?)"
    return link


def _metrics(tags: dict[str, str], run: Any, client: Any, verify: bool, work: Path) -> Link:
    try:
        gate = json.loads(tags.get("gate.decision", "null"))
    except json.JSONDecodeError:
        gate = tags.get("gate.decision")
    facts = {
        "accuracy": tags.get("metric.accuracy"),
        "macro_f1": tags.get("metric.macro_f1"),
        "gate_passed": tags.get("gate.passed"),
        "gate": gate,
        "latency_p95_ms": tags.get("onnx.latency_p95_ms"),
    }
    link = Link("metrics + gate", facts)
    if not verify:
        return link
    if run is None:
        link.status, link.detail = MISSING, "training run not found: metrics cannot be cross-checked"
        return link
    logged = run.data.metrics
    pairs = [("accuracy", "test_accuracy"), ("macro_f1", "test_macro_f1")]
    diffs = [
        f"{tag}: tag {facts[tag]} vs run {logged.get(metric)}"
        for tag, metric in pairs
        if facts[tag] is not None and logged.get(metric) is not None and abs(float(facts[tag]) - logged[metric]) > 1e-9
    ]
    if diffs:
        link.status, link.detail = CHANGED, "; ".join(diffs)
    elif all(facts[t] is None or logged.get(m) is None for t, m in pairs):
        link.status, link.detail = MISSING, "no test metrics recorded"
    else:
        link.status, link.detail = VERIFIED, "version's metric tags equal the run's logged test metrics"
        if _run_artifact(client, run.info.run_id, "register/gate_decision.json", work / "gate") is not None:
            link.notes.append("full gate decision: run artifact register/gate_decision.json")
    return link


def _onnx(tags: dict[str, str], name: str, version: str, verify: bool, work: Path) -> Link:
    link = Link(
        "onnx model", {"sha256": tags.get("onnx.sha256"), "parity_max_abs_diff": tags.get("onnx.parity_max_abs_diff")}
    )
    if not verify:
        return link
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(work / "onnx")))
        found = next(local.rglob("model.onnx"), None)
    except Exception as exc:
        link.status, link.detail = MISSING, f"cannot download models:/{name}/{version} ({type(exc).__name__})"
        return link
    if found is None:
        link.status, link.detail = MISSING, "the registered artifact holds no model.onnx"
    elif file_digest(found) == link.facts["sha256"]:
        link.status, link.detail = VERIFIED, "model.onnx downloaded from the registry, sha256 matches"
    else:
        link.status, link.detail = CHANGED, f"downloaded model.onnx has sha256 {file_digest(found)}"
    return link


def _registered(mv: Any, tags: dict[str, str], aliases: list[str], verify: bool) -> Link:
    facts = {
        "name": mv.name,
        "version": str(mv.version),
        "source": mv.source,
        "run_id": mv.run_id,
        "created": _ts(mv.creation_timestamp),
        "registered_by": tags.get("registered.by") or mv.user_id,
        "aliases": aliases,
    }
    link = Link("registered version", facts)
    if verify:
        if tags.get("run_id") and tags["run_id"] != mv.run_id:
            link.status, link.detail = CHANGED, f"tag run_id {tags['run_id']} differs from the version's run"
        else:
            link.status, link.detail = VERIFIED, "version's run and lineage tags agree"
    return link


def _history(name: str, version: str, alias_history: Any, aliases: list[str]) -> Link:
    events = alias_history(name, version=version)
    return Link("alias history", {"current_aliases": aliases, "events": events}, RECORDED, f"{len(events)} moves")


# ------------------------------------------------------------------------------------------------ rendering


def _fact_line(link: dict[str, Any]) -> str:
    f = link["facts"]
    step = link["step"]
    if step == "raw data":
        return f"{f['path']}  md5 {f['md5']}" + ("  (DVC-tracked)" if f.get("dvc_tracked") else "  (not DVC-tracked)")
    if step == "validation":
        ok = {True: "passed", False: "FAILED"}.get(f.get("success"), "?")
        return f"{ok}, {f.get('checks', '?')} checks  report sha256 {_short(f.get('report_sha256'))}"
    if step == "cleaned data":
        return f"clean {_short(f['clean_sha256'])}  test split {_short(f['test_sha256'])}  splits {f.get('splits')}"
    if step == "tokenised cache":
        return f"cache key {_short(f['cache_key'], 16)}"
    if step == "training run":
        versions = ", ".join(f"{k} {v}" for k, v in f["library_versions"].items() if k in ("torch", "transformers"))
        return (
            f"run {f['run_id']}  commit {_short(f['git_commit'])}{' (dirty)' if f['git_dirty'] else ''}  "
            f"seed {f['seed']}  {f.get('start')} → {f.get('end')}  {versions}"
        )
    if step == "metrics + gate":
        gate = {"true": "PASSED", "false": "FAILED"}.get(f.get("gate_passed") or "", "-")
        try:
            p95 = f"{float(f.get('latency_p95_ms')):.2f} ms"
        except (TypeError, ValueError):
            p95 = "not measured"
        return f"accuracy {f['accuracy']}  macro_f1 {f['macro_f1']}  gate {gate}  p95 latency {p95}"
    if step == "onnx model":
        return f"sha256 {f['sha256']}"
    if step == "registered version":
        return f"{f['name']} v{f['version']}  created {f['created']} by {f['registered_by']}  aliases {f['aliases']}"
    return f"aliases {f.get('current_aliases')}"


def render_text(report: dict[str, Any]) -> str:
    aliases = ", ".join(report["aliases"]) or "no alias"
    lines = [f"lineage of {report['model']} v{report['version']} ({aliases})"]
    for i, link in enumerate(report["links"], 1):
        lines.append(f"{i:>2}. {link['step']:<19}{link['status']:<9} {_fact_line(link)}")
        if link["detail"] and link["step"] != "alias history":
            lines.append(f"{'':<32} {link['detail']}")
        for note in link["notes"]:
            lines.append(f"{'':<32} note: {note}")
        if link["step"] == "alias history":
            for e in link["facts"]["events"]:
                forced = " (forced)" if e.get("forced") else ""
                lines.append(
                    f"{'':<32} {e.get('at')}  {e.get('alias')} v{e.get('from') or '-'} -> v{e.get('to')}  "
                    f"{e.get('action', 'move')}{forced} by {e.get('by')}: {e.get('reason')}"
                )
    if report["verified"]:
        s = report["summary"]
        lines.append(f"verify: {s[VERIFIED]} verified, {s[CHANGED]} changed, {s[MISSING]} missing")
    return "\n".join(lines)


_COLOURS = {VERIFIED: "#1a7f37", CHANGED: "#cf222e", MISSING: "#9a6700", RECORDED: "#57606a"}


def _html_value(value: Any) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_html_value(v)}</td></tr>" for k, v in value.items())
        return f"<table class='inner'>{rows}</table>"
    if isinstance(value, list):
        return "<br>".join(_html_value(v) for v in value) or "-"
    return html.escape("-" if value is None else str(value))


def render_html(report: dict[str, Any]) -> str:
    """A self-contained one-page audit report."""
    rows = []
    for i, link in enumerate(report["links"], 1):
        colour = _COLOURS.get(link["status"], "#57606a")
        notes = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in link["notes"])
        rows.append(
            f"<tr><td>{i}</td><td><b>{html.escape(link['step'])}</b></td>"
            f"<td><span class='status' style='background:{colour}'>{html.escape(link['status'])}</span>"
            f"<div>{html.escape(link['detail'])}</div>{notes}</td><td>{_html_value(link['facts'])}</td></tr>"
        )
    s = report["summary"]
    title = f"Lineage audit: {report['model']} v{report['version']}"
    summary = (
        f"{s[VERIFIED]} verified, {s[CHANGED]} changed, {s[MISSING]} missing"
        if report["verified"]
        else "facts as recorded (run with --verify to re-hash each link)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #d0d7de; padding: 6px 8px; vertical-align: top; text-align: left; font-size: 13px; }}
table.inner td, table.inner th {{ border: none; padding: 1px 6px; font-size: 12px; }}
.status {{ color: white; border-radius: 4px; padding: 2px 8px; font-weight: 600; }}
.note {{ color: #57606a; font-style: italic; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Aliases: {html.escape(", ".join(report["aliases"]) or "none")} · generated {html.escape(report["generated_at"])}
· <b>{html.escape(summary)}</b></p>
<table><tr><th>#</th><th>link</th><th>status</th><th>facts</th></tr>
{"".join(rows)}
</table></body></html>
"""
