"""``deploy/``: the kustomize base and overlays render, every object validates strictly on
the oldest and newest Kubernetes kubernetes-validate bundles, and the RBAC they grant
covers what the backend applies (users) and no more than scaling (pods).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import manifests
from kubetorch_jupyter.backends.kubernetes.container import RuntimeContainer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VERSIONS = ("1.25", "1.37")
KUSTOMIZATIONS = ("kustomize/base", "kustomize/overlays/gpu")

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed: `kubectl kustomize` renders the base without a cluster")


def _render(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / path)], capture_output=True,
                         text=True, check=True, timeout=60)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@needs_kubectl
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(path: str) -> None:
    objs = _render(path)
    assert objs
    for obj in objs:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")
        if obj["kind"] not in ("Namespace", "PriorityClass"):
            assert obj["metadata"]["namespace"] == "kubetorch"


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _plural(obj: dict[str, Any]) -> tuple[str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    return group, {"RayCluster": "rayclusters", "Service": "services",
                   "StatefulSet": "statefulsets", "Deployment": "deployments",
                   "ConfigMap": "configmaps", "Secret": "secrets", "CronJob": "cronjobs",
                   "ServiceAccount": "serviceaccounts", "Role": "roles",
                   "RoleBinding": "rolebindings"}[obj["kind"]]


@needs_kubectl
def test_user_role_covers_everything_the_backend_applies() -> None:
    roles = {o["metadata"]["name"]: o for o in _render("kustomize/base") if o["kind"] == "Role"}
    granted = _granted(roles["kubetorch-user"])
    runtime = RuntimeContainer(command=["python3", "-m", "pod_runtime"],
                               objects=[{"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "alice-dev-runtime"}}])
    objs: list[dict[str, Any]] = []
    for kwargs in ({}, {"replicas": 2}, {"distributed": "ray"}, {"autoscale": True}):
        spec = kt.Compute(name="dev", **kwargs).spec
        objs += manifests.render(spec, runtime=runtime, username="alice",
                                 namespace="kubetorch", scaler=True)
        objs.append(manifests.token_secret_manifest(spec, username="alice",
                                                    namespace="kubetorch", token="t"))
    objs += manifests.render_cronjob(kt.Compute(name="dev").spec, runtime=runtime,
                                     username="alice", namespace="kubetorch",
                                     schedule="@daily", command=["true"])
    for obj in objs:
        group, plural = _plural(obj)
        for verb in ("create", "get", "list", "watch", "patch", "delete"):
            assert (group, plural, verb) in granted, (group, plural, verb)
    for needed in [("", "pods", "watch"), ("", "pods/log", "get"),
                   ("", "pods/portforward", "create"), ("", "events", "list")]:
        assert needed in granted, needed


@needs_kubectl
def test_pods_may_only_scale() -> None:
    roles = {o["metadata"]["name"]: o for o in _render("kustomize/base") if o["kind"] == "Role"}
    granted = _granted(roles["kubetorch-pod-scaler"])
    assert {resource for _, resource, _ in granted} == {"deployments/scale",
                                                        "statefulsets/scale"}
    assert {verb for _, _, verb in granted} <= {"get", "patch", "update"}


def test_dockerfile_names_the_preinstalled_marker() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert "KT_RUNTIME_PREINSTALLED=1" in text and "KT_RUNTIME_VERSION=${VERSION}" in text
    for path in ("pod_runtime", "kernel_bridge", "kubetorch_jupyter", "pyproject.toml"):
        assert f"COPY {path}" in text and (ROOT / path).exists()
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}\n" in text  # the image's marker names this release
