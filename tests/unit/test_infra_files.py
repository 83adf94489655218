"""infra/ is validated, not just present: compose file against the Compose specification schema, the Kubernetes
Job of the work-pool template and the multi-node torchrun Job against the Kubernetes schemas, prefect.yaml against
the flow it deploys."""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PLACEHOLDER = re.compile(r"^\{\{\s*([a-z_]+)\s*\}\}$")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])

    broken = copy.deepcopy(_compose())
    broken["services"]["worker"]["depends_on"] = {"mlflow": {"condition": "when-it-feels-like-it"}}
    assert list(validator.iter_errors(broken)), "the schema check must catch a bad file"


def test_compose_stack_wires_postgres_minio_and_both_servers() -> None:
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg2://" in mlflow_cmd and "@postgres:5432/mlflow" in mlflow_cmd
    assert "--artifacts-destination s3://mlflow" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    init = (INFRA / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in init and "CREATE DATABASE prefect" in init
    worker = services["worker"]
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert set(worker["depends_on"]) == {"mlflow", "prefect-server"}
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert "healthcheck" in services[name], name
    pool = worker["command"][worker["command"].index("--pool") + 1]
    prefect_yaml = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    assert pool in {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert services["prefect-server"]["image"].startswith("prefecthq/prefect:3.8.8")


def test_dockerfile_installs_the_pinned_requirements_and_runs_a_worker() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "pip install -r requirements.txt" in text and "pip check" in text
    assert re.search(r"^USER (?!root)", text, re.M)
    assert re.search(r'^CMD \["prefect", "worker", "start"', text, re.M)


def _render(template: dict[str, Any]) -> dict[str, Any]:
    """What a Kubernetes worker does: fill each {{ variable }} with its value (defaults plus worker-set ones)."""
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(command="prefect flow-run execute", namespace=values.get("namespace", "default"))
    values["env"] = [{"name": k, "value": v} for k, v in values["env"].items()]
    values["command"] = values["command"].split()

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            whole = PLACEHOLDER.match(node)
            if whole:
                return values[whole.group(1)]
            return re.sub(r"\{\{\s*([a-z_]+)\s*\}\}", lambda m: str(values[m.group(1)]), node)
        return node

    manifest = fill(template["job_configuration"]["job_manifest"])
    manifest["metadata"]["name"] = manifest["metadata"].pop("generateName") + "abc12"
    return manifest


def test_k8s_work_pool_template_renders_a_valid_job() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    props = template["variables"]["properties"]
    used = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= set(props), f"placeholders without a variable: {used - set(props)}"
    manifest = _render(template)
    kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] and container["volumeMounts"][0]["mountPath"] == "/app/.nlpops"

    broken = copy.deepcopy(manifest)
    broken["spec"]["backoffLimit"] = "twice"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def test_prefect_yaml_deploys_the_retrain_flow_with_a_valid_schedule() -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    from flows.deploy import validate_cron
    from flows.retrain import retrain

    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    accepted = set(inspect.signature(retrain.fn).parameters)
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        assert (REPO / path).is_file() and func == "retrain"
        assert set(deployment["parameters"]) <= accepted
        assert deployment["parameters"]["skip_if_unchanged"] is True
        for schedule in deployment["schedules"]:
            validate_cron(schedule["cron"], schedule["timezone"])
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        ConcurrencyLimitConfig.model_validate(deployment["concurrency_limit"])  # the names Prefect accepts


def test_k8s_torchrun_job_is_valid_and_wires_the_rendezvous() -> None:
    """infra/k8s/torchrun-job.yaml (multi-node distributed training): a headless Service and an Indexed Job, both
    valid against the Kubernetes 1.37 schemas, whose pods find the rendezvous on pod 0 through the Service."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "torchrun-job.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {
        "job-name": job["metadata"]["name"]
    }
    assert spec["completionMode"] == "Indexed" and pod["subdomain"] == service["metadata"]["name"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"])
    script = container["args"][0]
    endpoint = f"{job['metadata']['name']}-0.{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert f'--rdzv-endpoint="{endpoint}"' in script and "-m pipelines.distributed" in script
    assert "train.processes=$((NNODES * NPROC_PER_NODE))" in script
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/shared" in mounts and "project.state_dir=/shared/state" in script  # checkpoints where every pod sees

    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["subdomian"] = broken["spec"]["template"]["spec"].pop("subdomain")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)
