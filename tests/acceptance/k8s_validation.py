"""Validation of generated Kubernetes manifests, offline, each object by the schema of its kind:

- CloudNativePG objects (``postgresql.cnpg.io``): the ``openAPIV3Schema`` of the operator's v1.30
  CRDs (``shared/crds/cloudnative-pg/`` beside the repository), with jsonschema, as strictly as the
  API server's field validation: an object with ``properties`` accepts no other field unless its
  schema says ``x-kubernetes-preserve-unknown-fields``. The CRDs' CEL rules
  (``x-kubernetes-validations``) are not evaluated, jsonschema has no CEL: those that apply when
  these objects are created (imageName or imageCatalogRef, ``synchronous.number > 0``) are
  asserted by test_init_k8s.py, the others guard updates (immutable references) or fields these
  files leave out.
- PodMonitor and PrometheusRule (``monitoring.coreos.com/v1``): :data:`POD_MONITOR_SCHEMA` and
  :data:`PROMETHEUS_RULE_SCHEMA`, built from the fields the Prometheus Operator's API reference
  documents for PodMonitorSpec, PodMetricsEndpoint, SafeTLSConfig, PrometheusRuleSpec, RuleGroup
  and Rule (no CRD of it is available offline); unknown fields are refused.
- everything else: ``kubernetes-validate --strict`` (Kubernetes' own OpenAPI schemas).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from missing_service import fail_missing

REPOSITORY = Path(__file__).resolve().parents[2]
CRD_SUBDIR = Path("shared", "crds", "cloudnative-pg")
CNPG_GROUP = "postgresql.cnpg.io"


def crd_directory() -> Path:
    """``shared/crds/cloudnative-pg`` next to the repository (CI puts ``shared/`` beside the
    clone), or next to a directory above it (a checkout in a subdirectory of that place)."""
    for place in REPOSITORY.parents:
        candidate = place / CRD_SUBDIR
        if candidate.is_dir():
            return candidate
    pytest.fail(f"the CloudNativePG CRDs are missing: expected {CRD_SUBDIR} beside the "
                f"repository ({REPOSITORY.parent / CRD_SUBDIR})", pytrace=False)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` wherever the API server would refuse
    unknown fields (kubectl's default field validation is Strict)."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


_METADATA = {
    "type": "object", "required": ["name", "namespace"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                            "maxLength": 63},
                   "namespace": {"type": "string"},
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "annotations": {"type": "object",
                                   "additionalProperties": {"type": "string"}}},
}
"""What these generated objects put in metadata (a CRD's schema leaves metadata to the API
server)."""


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of every CloudNativePG CRD version served."""
    schemas = {}
    for path in sorted(crd_directory().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = _METADATA
            schemas[f"{group}/{version['name']}", kind] = schema
    return schemas


_SECRET_KEY = {"type": "object", "required": ["key"], "additionalProperties": False,
               "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                              "optional": {"type": "boolean"}}}
_SECRET_OR_CONFIG_MAP = {"type": "object", "additionalProperties": False,
                         "properties": {"secret": _SECRET_KEY, "configMap": _SECRET_KEY}}
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}}},
}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                          "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_RELABELINGS = {"type": "array", "items": {"type": "object"}}
POD_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object", "required": ["selector"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array"}}},
                "sampleLimit": {"type": "integer"}, "targetLimit": {"type": "integer"},
                "labelLimit": {"type": "integer"}, "labelNameLengthLimit": {"type": "integer"},
                "labelValueLengthLimit": {"type": "integer"},
                "attachMetadata": {"type": "object"},
                "podMetricsEndpoints": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "portNumber": {"type": "integer"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "params": {"type": "object"}, "interval": _DURATION,
                        "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "filterRunning": {"type": "boolean"},
                        "followRedirects": {"type": "boolean"},
                        "enableHttp2": {"type": "boolean"},
                        "proxyUrl": {"type": "string"},
                        "bearerTokenSecret": _SECRET_KEY,
                        "basicAuth": {"type": "object"}, "authorization": {"type": "object"},
                        "oauth2": {"type": "object"},
                        "relabelings": _RELABELINGS, "metricRelabelings": _RELABELINGS,
                        "tlsConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"ca": _SECRET_OR_CONFIG_MAP,
                                           "cert": _SECRET_OR_CONFIG_MAP,
                                           "keySecret": _SECRET_KEY,
                                           "serverName": {"type": "string"},
                                           "insecureSkipVerify": {"type": "boolean"},
                                           "minVersion": {"type": "string"},
                                           "maxVersion": {"type": "string"}}},
                    }}},
            },
        },
    },
}


_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                    "query_offset": _DURATION, "limit": {"type": "integer"},
                    "partial_response_strategy": {"type": "string"},
                    "labels": _STRINGS,
                    "rules": {"type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "properties": {"alert": {"type": "string"},
                                       "record": {"type": "string"},
                                       "expr": {"type": ["string", "integer"]},
                                       "for": _DURATION, "keep_firing_for": _DURATION,
                                       "labels": _STRINGS, "annotations": _STRINGS},
                        # Only one of record and alert must be set.
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}}}}}},
    },
}
_MONITORING_SCHEMAS = {"PodMonitor": POD_MONITOR_SCHEMA,
                       "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


def schema_errors(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(document)]


def validate_manifests(paths: list[Path], scratch: Path) -> dict[str, list[dict[str, Any]]]:
    """Validate every object of ``paths`` by its kind's schema (module docstring); fails the test
    with every error. Returns the objects by validator: "cnpg", "podmonitor",
    "prometheusrule", "kubernetes"."""
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        fail_missing("kubernetes-validate is not installed (pip install -e '.[dev]')")
    found: dict[str, list[dict[str, Any]]] = {"cnpg": [], "podmonitor": [],
                                              "prometheusrule": [], "kubernetes": []}
    errors: list[str] = []
    plain: list[Path] = []
    for path in paths:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        rest = []
        for document in documents:
            where = f"{path.name}: {document.get('kind')} {document['metadata'].get('name')}"
            if document["apiVersion"].startswith(CNPG_GROUP + "/"):
                schema = crd_schemas().get((document["apiVersion"], document["kind"]))
                if schema is None:
                    errors.append(f"{where}: no CloudNativePG v1.30 CRD for "
                                  f"{document['apiVersion']} {document['kind']}")
                    continue
                errors += [f"{where}: {e}" for e in schema_errors(document, schema)]
                found["cnpg"].append(document)
            elif document["apiVersion"] == "monitoring.coreos.com/v1":
                monitoring = _MONITORING_SCHEMAS.get(document["kind"])
                if monitoring is None:
                    errors.append(f"{where}: no schema for monitoring.coreos.com/v1 "
                                  f"{document['kind']}")
                    continue
                errors += [f"{where}: {e}" for e in schema_errors(document, monitoring)]
                found[document["kind"].lower()].append(document)
            else:
                rest.append(document)
                found["kubernetes"].append(document)
        if rest:
            plain.append(scratch / path.name)
            plain[-1].write_text(yaml.safe_dump_all(rest))
    if plain:
        result = subprocess.run([str(tool), "--strict", *map(str, plain)], capture_output=True,
                                text=True, timeout=120)
        output = result.stdout + result.stderr
        # A kind it has no schema for is only a warning there: not here.
        if result.returncode != 0 or "Couldn't find schema" in output or "ERROR" in output:
            errors.append(output)
    assert not errors, "\n".join(errors)
    return found
