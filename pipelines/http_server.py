"""`nlpops serve`: the champion's ONNX model over HTTP (FastAPI + uvicorn), through its task's torch-free runtime.

- `POST /predict`: `{"inputs": [...]}`, a batch in the task's input shape (texts; `{"text", "text_pair"}` objects
  for a sentence-pair model; strings or word lists for token classification) -> the runtime's outputs, plus the
  model name and version that produced them.
- `GET /health`, `GET /model` (name, version, aliases, task, metrics, lineage summary), OpenAPI docs at `/docs`.

A background thread polls the alias every `poll_s` seconds; when it points at another version (a promotion or a
rollback), that version is downloaded, loaded and warmed up, then swapped in with one reference assignment. Each
request takes the model of the moment it arrived, so in-flight requests finish on the old one. A version that
cannot be loaded, or a registry that cannot be reached, leaves the current model serving (reported by /health).

Predictions run on one worker thread (the fast tokenizer is not safe to call from several threads at once): requests
that queue while it is busy are combined into one runtime call (up to `batch_rows` rows), which is where the
throughput under load comes from. Bad input is a 4xx with a one-line `detail`; the server never 500s on input.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

log = logging.getLogger("nlpops.serve")

LINEAGE_TAGS = {
    "data_md5": "data.md5",
    "data_path": "data.path",
    "git_commit": "git.commit",
    "git_dirty": "git.dirty",
    "params_hash": "params.hash",
    "onnx_sha256": "onnx.sha256",
    "gate_passed": "gate.passed",
    "registered_by": "registered.by",
}


@dataclass(frozen=True)
class ServeOptions:
    alias: str = "champion"
    poll_s: float = 10.0  # 0: never re-read the alias
    max_items: int = 256
    max_chars: int = 10_000
    batch_rows: int = 64

    def max_body_bytes(self) -> int:
        """Largest request body accepted (413 above): every item at its character limit, JSON-escaped."""
        return self.max_items * (self.max_chars * 6 + 64) + 65_536


@dataclass(frozen=True)
class LoadedModel:
    """One loaded version: its runtime and what /model says about it."""

    runtime: Any
    name: str
    version: str
    task: str
    pair: bool
    info: dict[str, Any]
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def model_info(name: str, version: Any, task: str) -> dict[str, Any]:
    """/model's description of a registry ModelVersion: metrics from its `metric.*` tags and a lineage summary."""
    tags = dict(version.tags or {})
    created = getattr(version, "creation_timestamp", None)
    return {
        "name": name,
        "version": str(version.version),
        "aliases": sorted(getattr(version, "aliases", None) or []),
        "task": task,
        "metrics": {
            k.removeprefix("metric."): _number(v)
            for k, v in sorted(tags.items())
            if k.startswith("metric.") and k != "metric.slices"
        },
        "lineage": {
            "run_id": version.run_id or tags.get("run_id"),
            **{key: tags.get(tag) for key, tag in LINEAGE_TAGS.items()},
            "registered_at": (
                datetime.fromtimestamp(created / 1000, UTC).isoformat(timespec="seconds") if created else None
            ),
        },
    }


def warm_up_items(task: str, pair: bool) -> list[Any]:
    if task == "text_classification" and pair:
        return [{"text": "warm up", "text_pair": "warm up"}]
    return ["warm up"]


class RegistrySource:
    """Where the served model comes from: the registry alias (resolve) and a version's export folder (load)."""

    def __init__(self, params: Any, alias: str) -> None:
        self.params = params
        self.alias = alias
        self.name = params.project.registered_model

    def resolve(self) -> Any | None:
        """The ModelVersion the alias points at now (None: the alias is not set)."""
        from pipelines.registry import alias_version

        return alias_version(self.name, self.alias)

    def load(self, version: Any) -> LoadedModel:
        from pipelines.predict import registered_export_dir
        from pipelines.serving import load_runtime

        runtime = load_runtime(registered_export_dir(self.params, self.name, str(version.version)))
        task = str(getattr(runtime, "task", "") or (version.tags or {}).get("task.type", "text_classification"))
        pair = bool(getattr(runtime, "pair", False))
        runtime.predict(warm_up_items(task, pair))  # a broken model fails here, before it is swapped in
        return LoadedModel(runtime, self.name, str(version.version), task, pair, model_info(self.name, version, task))


class ModelHolder:
    """The model being served, swapped atomically when the alias moves; polls in a daemon thread."""

    def __init__(self, source: Any, poll_s: float) -> None:
        self.source = source
        self.poll_s = poll_s
        self._current: LoadedModel | None = None
        self._swap = threading.Lock()  # one load at a time; readers never wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_poll: str | None = None
        self.last_error: str | None = None
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def load_initial(self) -> LoadedModel:
        """The alias's version now; RegistryError when the alias is not set (serving nothing is no use)."""
        from pipelines.errors import RegistryError

        version = self.source.resolve()
        if version is None:
            raise RegistryError(
                f"serve: {self.source.name!r} has no version with alias {self.source.alias!r}; run `nlpops run` "
                "or `nlpops promote VERSION` first"
            )
        self._current = self.source.load(version)
        return self._current

    def refresh(self) -> bool:
        """One poll: follow the alias to a new version if it moved. True when the model was swapped."""
        from pipelines.errors import first_line

        with self._swap:
            self.last_poll = datetime.now(UTC).isoformat(timespec="seconds")
            try:
                version = self.source.resolve()
            except Exception as exc:  # registry down: keep serving what we have
                self.last_error = f"cannot read alias {self.source.alias!r}: {first_line(exc, 300)}"
                return False
            current = self._current
            if version is None:
                self.last_error = f"alias {self.source.alias!r} is not set; still serving the last version loaded"
                return False
            if current is not None and str(version.version) == current.version:
                aliases = sorted(getattr(version, "aliases", None) or [])
                if aliases != current.info.get("aliases"):  # another alias moved on or off this version
                    current.info["aliases"] = aliases
                self.last_error = None
                return False
            try:
                loaded = self.source.load(version)
            except Exception as exc:
                self.last_error = f"cannot load v{version.version}: {first_line(exc, 300)}; still serving the old one"
                log.error("serve: %s", self.last_error)
                return False
            self._current = loaded  # the swap: one reference assignment; requests holding the old one finish on it
            self.swaps += 1
            self.last_error = None
            old = f"v{current.version}" if current else "nothing"
            log.warning("serve: %s now serves v%s (was %s)", loaded.name, loaded.version, old)
            return True

    def start(self) -> None:
        if self.poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="nlpops-serve-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as exc:  # never let the poller die
                self.last_error = f"poll failed: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


@dataclass
class _Job:
    model: LoadedModel
    items: list[Any]
    future: concurrent.futures.Future


class Batcher:
    """One worker thread runs every prediction; requests that queued meanwhile are combined into one call."""

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = max(1, batch_rows)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="nlpops-serve-predict", daemon=True)
        self._thread.start()

    def submit(self, model: LoadedModel, items: list[Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(model, items, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows, stop = [job], len(job.items), False
            while rows < self.batch_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                rows += len(more.items)
            groups: dict[int, list[_Job]] = {}
            for j in jobs:  # requests that arrived on different models run on their own model
                if j.future.set_running_or_notify_cancel():  # False: the client went away while it waited
                    groups.setdefault(id(j.model), []).append(j)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as exc:  # the worker must outlive any one batch
                    log.error("serve: prediction worker: %s: %s", type(exc).__name__, exc)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        runtime = jobs[0].model.runtime
        try:
            results = runtime.predict([item for j in jobs for item in j.items], batch_size=self.batch_rows)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for j in jobs:  # one bad request must not fail the others it was combined with
                self._run([j])
            return
        start = 0
        for j in jobs:
            j.future.set_result(results[start : start + len(j.items)])
            start += len(j.items)


# ------------------------------------------------------------------------------------------------ HTTP schema


class HealthResponse(BaseModel):
    status: str = Field(description="ok, or degraded when the last poll of the alias failed (still serving)")
    model: str
    version: str
    alias: str
    uptime_s: float
    last_poll: str | None = None
    last_error: str | None = None


class Lineage(BaseModel):
    run_id: str | None = None
    data_md5: str | None = None
    data_path: str | None = None
    git_commit: str | None = None
    git_dirty: str | None = None
    params_hash: str | None = None
    onnx_sha256: str | None = None
    gate_passed: str | None = None
    registered_by: str | None = None
    registered_at: str | None = None


class ModelResponse(BaseModel):
    name: str
    version: str
    aliases: list[str]
    task: str
    pair: bool
    metrics: dict[str, float | str]
    lineage: Lineage
    loaded_at: str


class ErrorResponse(BaseModel):
    detail: str


def request_models(options: ServeOptions, task: str, pair: bool) -> tuple[type[BaseModel], str]:
    """The /predict body for the served model's input shape, with the configured limits in the schema (so /docs and
    schema-driven clients see exactly what is accepted). A later champion of another task type is still checked
    per request (check_items), with a 422 naming the shape it takes."""
    Text = Annotated[str, StringConstraints(max_length=options.max_chars)]

    class TextItem(BaseModel):
        """One input as an object."""

        model_config = ConfigDict(extra="forbid")
        text: Text

    class PairItem(BaseModel):
        """One input of a sentence-pair model."""

        model_config = ConfigDict(extra="forbid")
        text: Text
        text_pair: Text

    Words = Annotated[list[Text], Field(max_length=options.max_chars)]
    item: Any
    example: list[Any]
    if task == "token_classification":
        item, shapes = Text | Words, "texts, or lists of words"
        example = ["Angela Merkel visited Paris.", ["Angela", "Merkel", "visited", "Paris", "."]]
    elif pair:
        item, shapes = PairItem, '{"text", "text_pair"} objects'
        example = [{"text": "A man is eating.", "text_pair": "Someone eats."}]
    else:
        item, shapes = Text | TextItem, 'texts (or {"text"} objects)'
        example = ["The battery died after two days.", {"text": "Lovely staff."}]
    examples: dict[str, Any] = {"examples": [{"inputs": example}]}

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra=examples)
        inputs: Annotated[
            list[item],  # type: ignore[valid-type]
            Field(min_length=1, max_length=options.max_items, description=f"The batch: {shapes}."),
        ]

    PredictRequest.__doc__ = f"A batch for the served {task} model: {shapes}."
    return PredictRequest, shapes


class PredictResponse(BaseModel):
    model: str
    version: str
    task: str
    outputs: list[dict[str, Any]] = Field(
        description="One per input: {label, score, scores} (text classification), {entities, tags, words, scores} "
        "(token classification)"
    )


def _where(loc: tuple[Any, ...]) -> str:
    """('body', 'inputs', 3, 'PairItem', 'text') -> 'inputs[3].text' (union member names left out)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _union_member(part):
            continue  # pydantic names the union member it tried ("constrained-str", "PairItem", "list[...]")
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _message(error: dict[str, Any]) -> str:
    where, kind = _where(tuple(error.get("loc") or ())), str(error.get("type", ""))
    if kind == "extra_forbidden":
        return f"{where}: unknown field (a request takes 'inputs'; an item object takes 'text' and 'text_pair')"
    if kind == "missing" and where == "inputs":
        return 'body: missing "inputs" (send {"inputs": [...]})'
    if kind == "json_invalid":
        return f"body is not valid JSON ({error.get('ctx', {}).get('error') or error.get('msg')})"
    if kind == "string_unicode":
        return f"{where}: not valid Unicode text (a lone surrogate)"
    return f"{where}: {error.get('msg')}"


MISMATCH = {"string_type", "model_type", "list_type", "dict_type", "model_attributes_type"}


def _union_member(part: Any) -> bool:
    return isinstance(part, str) and (part[:1].isupper() or part.startswith(("constrained-", "str", "list[")))


def describe_validation_error(errors: list[dict[str, Any]], shapes: str = "") -> str:
    """One line for a 422: the first problem, said plainly (no echo of the input). An item that fits none of the
    accepted shapes is described by the shape it came closest to (a too-long string, an unknown field, a word that
    is not a string), or, when its type fits none, by the shapes accepted."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = tuple(first.get("loc") or ())
    if len(loc) >= 3 and loc[:2] == ("body", "inputs") and isinstance(loc[2], int):
        same = [e for e in errors if tuple(e.get("loc") or ())[:3] == loc[:3]]

        def shape_mismatch(e: dict[str, Any]) -> bool:
            where = tuple(e.get("loc") or ())
            at_item = len(where) == 3 or (len(where) == 4 and _union_member(where[3]))
            return at_item and str(e.get("type")) in MISMATCH

        specific = [e for e in same if not shape_mismatch(e)]
        if specific:
            return _message(specific[0])
        return f"inputs[{loc[2]}]: expected {shapes or 'another shape'}"
    return _message(first)


def check_items(model: LoadedModel, items: list[Any], options: ServeOptions) -> list[Any]:
    """The items in the shape the model's runtime takes, or ValueError naming the first one that does not fit."""
    out: list[Any] = []
    for i, item in enumerate(items):
        data = item.model_dump() if isinstance(item, BaseModel) else item
        if isinstance(data, list):
            if model.task != "token_classification":
                raise ValueError(
                    f"inputs[{i}]: a list of words is for token classification; this is a {model.task} model"
                )
            if sum(len(w) + 1 for w in data) - 1 > options.max_chars:
                raise ValueError(f"inputs[{i}]: the words add up to more than {options.max_chars} characters")
        elif isinstance(data, dict):
            if model.task != "text_classification":
                raise ValueError(
                    f"inputs[{i}]: {{text, text_pair}} objects are for text classification, not {model.task}"
                )
            if model.pair and data.get("text_pair") is None:
                raise ValueError(f"inputs[{i}]: this is a sentence-pair model: every item needs text and text_pair")
            if not model.pair and data.get("text_pair") is not None:
                raise ValueError(f"inputs[{i}]: this is a single-sentence model: text_pair is not accepted")
            data = (data["text"], data["text_pair"]) if model.pair else data["text"]
        elif model.pair:
            raise ValueError(f'inputs[{i}]: this is a sentence-pair model: send {{"text": ..., "text_pair": ...}}')
        for text in data if isinstance(data, (list, tuple)) else [data]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"inputs[{i}]: not valid Unicode text (a lone surrogate)") from None
        out.append(data)
    return out


def create_app(holder: ModelHolder, options: ServeOptions, batcher: Batcher | None = None) -> Any:
    """The FastAPI application serving `holder`'s model."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    first = holder.current
    PredictRequest, shapes = request_models(
        options, first.task if first else "text_classification", first.pair if first else False
    )
    started = time.monotonic()
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(_app: Any):
        state["batcher"] = batcher or Batcher(options.batch_rows)
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            state["batcher"].close()

    app = FastAPI(
        title="nlpops model server",
        description="The registered champion's ONNX model, through its task's torch-free runtime. A promotion or a "
        "rollback is picked up without a restart.",
        version="1",
        lifespan=lifespan,
    )
    bad = {"model": ErrorResponse}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": describe_validation_error(list(exc.errors()), shapes)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400:  # FastAPI's "There was an error parsing the body": not UTF-8 or unreadable
            detail = "body cannot be read as JSON text (send UTF-8 JSON)"
        return JSONResponse(status_code=exc.status_code, content={"detail": detail}, headers=exc.headers)

    limit = options.max_body_bytes()

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Callable) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(status_code=413, content={"detail": f"request body over {limit} bytes"})
        return await call_next(request)

    def serving() -> LoadedModel:
        model = holder.current
        if model is None:  # only before the first load
            from fastapi import HTTPException

            raise HTTPException(status_code=503, detail="no model loaded yet")
        return model

    @app.get("/health", response_model=HealthResponse, responses={503: bad})
    def health() -> dict[str, Any]:
        """Is a model loaded, which, and did the last poll of the alias work."""
        model = serving()
        return {
            "status": "degraded" if holder.last_error else "ok",
            "model": model.name,
            "version": model.version,
            "alias": holder.source.alias,
            "uptime_s": round(time.monotonic() - started, 3),
            "last_poll": holder.last_poll,
            "last_error": holder.last_error,
        }

    @app.get("/model", response_model=ModelResponse, responses={503: bad})
    def describe() -> dict[str, Any]:
        """The served version: aliases, task, metrics from its registry tags, lineage summary."""
        model = serving()
        return {**model.info, "pair": model.pair, "loaded_at": model.loaded_at}

    async def predict(request: Any) -> dict[str, Any]:
        """Predict a batch with the model being served when the request arrived."""
        from fastapi import HTTPException

        model = serving()
        try:
            items = check_items(model, list(request.inputs), options)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        try:
            outputs = await asyncio.wrap_future(state["batcher"].submit(model, items))
        except ValueError as exc:  # the runtime's own input checks
            raise HTTPException(status_code=422, detail=f"input refused by the {model.task} runtime: {exc}") from None
        return {"model": model.name, "version": model.version, "task": model.task, "outputs": outputs}

    predict.__annotations__["request"] = PredictRequest  # a class made above: FastAPI reads the body schema here
    app.post("/predict", response_model=PredictResponse, responses={400: bad, 413: bad, 422: bad, 503: bad})(predict)
    return app


def listen_socket(host: str, port: int) -> Any:
    """The listening socket, bound here so that a taken port is one clear error rather than a uvicorn log line."""
    import socket

    from pipelines.errors import NlpopsError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise NlpopsError(f"serve: --host {host!r}: cannot resolve it ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise NlpopsError(f"serve: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(
    params: Any, host: str, port: int, options: ServeOptions, announce: Callable[[str], None], access_log: bool = False
) -> None:
    """Load the alias's version, bind, and serve until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    from pipelines.tracking import configure_tracking

    sock = listen_socket(host, port)  # first: a taken port fails before the model is loaded
    configure_tracking(params)
    holder = ModelHolder(RegistrySource(params, options.alias), options.poll_s)
    try:
        model = holder.load_initial()
    except BaseException:
        sock.close()
        raise
    app = create_app(holder, options)
    shown = f"[{host}]" if ":" in host else host
    bound = sock.getsockname()[1]
    poll = f"polls alias {options.alias!r} every {options.poll_s:g}s" if options.poll_s > 0 else "alias not polled"
    announce(
        f"serving {model.name} v{model.version} ({model.task}) on http://{shown}:{bound}  docs: http://{shown}:{bound}/docs"
        f"  ({poll}; at most {options.max_items} items of {options.max_chars} characters per request)"
    )
    config = uvicorn.Config(
        app, log_level="warning", access_log=access_log, lifespan="on", timeout_graceful_shutdown=10
    )
    uvicorn.Server(config).run(sockets=[sock])
