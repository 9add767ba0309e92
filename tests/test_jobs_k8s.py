"""``kt export --backend kubernetes``: the CronJob and its objects, validated as an API
server would (kubernetes-validate, strict, oldest and newest), and the job container's
own command run here against the ConfigMap's files: a real notebook run, its ``%%kt``
cell in the kernel (``KT_JOB_COMPUTE``), its output on the "claim"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import nbformat
import pytest
import yaml
from kt_testing import timeout
from test_jobs import notebook, outputs

from kubetorch_jupyter.cli.main import main
from kubetorch_jupyter.core.spec import ComputeSpec
from kubetorch_jupyter.jobs.store import jobs_dir

REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("1.25", "1.37")
SPEC = ComputeSpec(name="trainer", gpus=1, memory=16 * 2**30, cpus=4,
                   image={"base": "ghcr.io/example/kt-jobs:1", "steps": []},
                   backend="kubernetes")


@pytest.fixture
def exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    monkeypatch.setenv("KT_USERNAME", "alice")
    monkeypatch.setenv("KT_CRONTAB_FILE", str(tmp_path / "crontab"))
    path = notebook(tmp_path / "train.ipynb", [
        "%load_ext kubetorch_jupyter",
        "%%kt --name trainer\nimport os\nprint('in the job pod', os.getpid(), lr)\nlr * 2",
    ], params="lr = 0.1", compute=SPEC)
    assert main(["export", str(path), "--backend", "kubernetes", "--schedule", "0 3 * * 1-5",
                 "--timezone", "Europe/Paris", "-p", "lr=0.25", "--name", "nightly",
                 "--namespace", "ml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kubectl apply -f" in out and "namespace 'ml'" in out and "--dry-run" in out
    assert not (tmp_path / "crontab").exists()  # the schedule lives in the cluster
    return list(yaml.safe_load_all((jobs_dir() / "nightly" / "manifests.yaml").read_text()))


def test_the_objects_validate_strictly(exported: list[dict[str, Any]]) -> None:
    assert [o["kind"] for o in exported] == ["ConfigMap", "ConfigMap", "PersistentVolumeClaim",
                                             "CronJob"]
    for version in VERSIONS:
        for obj in exported:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {o["metadata"]["namespace"] for o in exported} == {"ml"}


def test_the_cronjob_has_the_schedule_policies_and_the_computes_resources(
        exported: list[dict[str, Any]]) -> None:
    cron = exported[-1]
    assert cron["metadata"]["name"] == "alice-nightly"
    body = cron["spec"]
    assert body["schedule"] == "0 3 * * 1-5" and body["timeZone"] == "Europe/Paris"
    assert body["concurrencyPolicy"] == "Forbid" and body["startingDeadlineSeconds"] == 300
    assert body["successfulJobsHistoryLimit"] == body["failedJobsHistoryLimit"] == 3
    pod = body["jobTemplate"]["spec"]["template"]["spec"]
    main_container = pod["containers"][0]
    assert main_container["image"] == "ghcr.io/example/kt-jobs:1"
    assert main_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main_container["resources"]["limits"]["memory"] == "16Gi"
    env = {e["name"]: e.get("value") for e in main_container["env"]}
    assert env["KT_JOB_COMPUTE"] == "trainer" and env["KT_STATE_DIR"] == "/kt/state"
    assert json.loads(env["KT_JOB_SPEC"])["gpus"] == 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kt-job"]["configMap"]["name"] == "alice-nightly-notebook"
    assert volumes["kt-job-runs"]["persistentVolumeClaim"]["claimName"] == "alice-nightly-runs"
    mounts = {m["mountPath"]: m["name"] for m in main_container["volumeMounts"]}
    assert mounts["/kt/job"] == "kt-job" and mounts["/kt/state"] == "kt-job-runs"


def test_the_configmap_holds_the_notebook_without_outputs_and_its_parameters(
        exported: list[dict[str, Any]]) -> None:
    data = exported[1]["data"]
    nb = nbformat.reads(data["notebook.ipynb"], as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kubetorch"]["compute"]["name"] == "trainer"
    job = json.loads(data["job.json"])
    assert job["parameters"] == {"lr": 0.25} and job["backend"] == "kubernetes"
    assert job["cwd"] == "/kt/state/jobs/nightly" and job["env"] == {}


def test_the_job_containers_command_runs_the_notebook(exported: list[dict[str, Any]],
                                                      tmp_path: Path) -> None:
    """The container's exact command, with the ConfigMap's files and an empty "claim"
    where the pod has its mounts, and the container's env; python3 is this Python."""
    mounted = tmp_path / "kt-job"
    mounted.mkdir()
    for key, text in exported[1]["data"].items():
        (mounted / key).write_text(text)
    claim = tmp_path / "claim"
    container = exported[-1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(KT_JOB_DIR=str(mounted), KT_STATE_DIR=str(claim), HOME=str(tmp_path),
               PYTHONPATH=str(REPO), KT_PROGRESS="0",
               PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    python3 = Path(sys.executable).parent / "python3"
    assert python3.exists() and os.path.samefile(python3, sys.executable)
    proc = subprocess.run(container["command"], env=env, capture_output=True, text=True,
                          timeout=timeout(120), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((claim / "jobs" / "nightly" / "runs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["outcome"] == "succeeded" and record["trigger"] == "schedule"
    nb = nbformat.read(runs[0] / "output.ipynb", as_version=4)
    out = outputs(nb, "in the job pod")
    assert "0.25" in out and "0.5" in out  # the parameter, and the cell's value
    pid = int(out.split("in the job pod")[1].split()[0])
    assert pid != record["pid"]  # the kernel's own process: no pod was started for it


@pytest.mark.parametrize(("args", "says"), [
    ([], "--backend kubernetes needs --schedule"),
    (["--schedule", "@daily", "--namespace", "other", "--compute",
      '{"name": "trainer", "kubernetes": {"namespace": "ml"}}'],
     "the compute 'trainer' asks for namespace 'ml'"),
    (["--schedule", "0 25 * * *"], "hour field: 25 is out of range 0-23"),
    (["--schedule", "@daily", "--backend", "local", "--namespace", "ml"],
     "--namespace: only for --backend kubernetes"),
])
def test_bad_kubernetes_export_creates_nothing(tmp_path: Path, args: list[str], says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = notebook(tmp_path / "nb.ipynb", ["x = 1"])
    argv = ["export", str(path), "--backend", "kubernetes", *args]
    if "--backend" in args:
        argv = ["export", str(path), *args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())


def test_without_a_cluster_config_export_says_what_to_set_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KT_KUBECONFIG", raising=False)
    path = notebook(tmp_path / "nb.ipynb", ["x = 1"])
    assert main(["export", str(path), "--backend", "kubernetes", "--schedule", "@daily"]) == 1
    err = capsys.readouterr().err
    assert "found no cluster: set KT_KUBECONFIG" in err and "--dry-run" in err, err
    assert err.count("\n") == 1, err
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())


# ---- on the API-server double, through kt export / kt jobs -------------------------------

def _kt(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def _names(api: Any, ns: str, selector: str) -> dict[str, list[str]]:
    """The objects ``selector`` picks in ``ns``, by kind."""
    from kubernetes import client

    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    return {kind: sorted(o.metadata.name for o in lister(ns, label_selector=selector).items)
            for kind, lister in (("ConfigMap", core.list_namespaced_config_map),
                                 ("PersistentVolumeClaim",
                                  core.list_namespaced_persistent_volume_claim),
                                 ("CronJob", batch.list_namespaced_cron_job),
                                 ("Job", batch.list_namespaced_job))}


@pytest.fixture
def on_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A double with one GPU (the job's compute asks for one), its kubeconfig in
    KT_KUBECONFIG, namespace ``ml``, and the notebook to export."""
    from k8s_double import K8sDouble
    from kubernetes import client

    monkeypatch.setenv("KT_USERNAME", "alice")
    monkeypatch.setenv("KT_CRONTAB_FILE", str(tmp_path / "crontab"))
    path = notebook(tmp_path / "train.ipynb", [
        "%load_ext kubetorch_jupyter",
        "%%kt --name trainer\nimport os\nprint('in the job pod', os.getpid(), lr)\nlr * 2",
    ], params="lr = 0.1", compute=SPEC)
    with K8sDouble(gpus=1) as cluster:
        monkeypatch.setenv("KT_KUBECONFIG", str(cluster.kubeconfig_path))
        client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": "ml"}})
        yield cluster, path
        assert not cluster.errors, cluster.errors


def test_export_applies_the_job_and_kt_jobs_runs_lists_and_removes_it(
        on_double: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from k8s_testing import wait_for
    from kubernetes import client

    from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend
    from kubetorch_jupyter.exceptions import ComputeNotFoundError

    cluster, path = on_double
    api = cluster.api_client()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.create_namespaced_config_map("ml", {"metadata": {"name": "someone-elses"}})
    for name in ("nightly", "weekly"):
        code, out, err = _kt(capsys, "export", str(path), "--backend", "kubernetes",
                             "--schedule", "0 3 * * 1-5", "-p", "lr=0.25", "--name", name,
                             "--namespace", "ml")
        assert code == 0, err
        assert f"applied   to {cluster.url}" in out and "kubectl" not in out, out
    written = list(yaml.safe_load_all((jobs_dir() / "nightly" / "manifests.yaml").read_text()))
    assert _names(api, "ml", "kubetorch.dev/job=nightly") == {
        "ConfigMap": ["alice-nightly-notebook"], "PersistentVolumeClaim": ["alice-nightly-runs"],
        "CronJob": ["alice-nightly"], "Job": []}
    assert {o["metadata"]["name"] for o in written[1:]} == {
        "alice-nightly-notebook", "alice-nightly-runs", "alice-nightly"}
    runtime = written[0]["metadata"]["name"]
    live = core.read_namespaced_config_map(runtime, "ml")
    assert live.metadata.labels["kubetorch.dev/component"] == "runtime"
    assert "kubetorch.dev/compute" not in live.metadata.labels  # shared, nobody's
    cj = batch.read_namespaced_cron_job("alice-nightly", "ml")
    assert cj.spec.schedule == "0 3 * * 1-5"
    assert any(f.manager == "kubetorch-jupyter" and f.operation == "Apply"
               for f in cj.metadata.managed_fields)

    # the compute's teardown leaves the job alone (it is kt jobs rm's)
    with pytest.raises(ComputeNotFoundError):
        KubernetesBackend(namespace="ml").down("trainer")
    assert _names(api, "ml", "kubetorch.dev/job=nightly")["CronJob"] == ["alice-nightly"]

    code, out, err = _kt(capsys, "jobs", "run", "nightly")
    assert code == 0, out + err
    assert "started job alice-nightly-manual-" in out and "from cronjob/alice-nightly" in out
    assert "in the job pod" in out and "succeeded" in out, out  # the pod's log, followed
    (job,) = batch.list_namespaced_job("ml", label_selector="kubetorch.dev/job=nightly").items
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    (owner,) = job.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("CronJob", "alice-nightly", cj.metadata.uid)
    assert job.spec.template.spec.containers[0].command == (
        cj.spec.job_template.spec.template.spec.containers[0].command)
    runs = cluster.claim_path("alice-nightly-runs", "ml") / "jobs" / "nightly" / "runs"
    (run,) = list(runs.iterdir())
    record = json.loads((run / "run.json").read_text())
    assert record["outcome"] == "succeeded" and record["trigger"] == "manual", record
    out_nb = outputs(nbformat.read(run / "output.ipynb", as_version=4), "in the job pod")
    assert "0.25" in out_nb and "0.5" in out_nb  # the injected parameter, the cell's value

    code, out, _ = _kt(capsys, "jobs", "logs", "nightly")  # the latest Job's pod log
    assert code == 0 and "in the job pod" in out and "(manual)" in out and "succeeded" in out, out
    code, _, err = _kt(capsys, "jobs", "output", "nightly")
    assert code == 1 and "on its runs' claim" in err and err.count("\n") == 1, err

    wait_for(batch.list_namespaced_cron_job, lambda c: bool(
        c.metadata.name == "alice-nightly" and c.status and c.status.last_successful_time),
        "ml", seconds=60)
    code, out, err = _kt(capsys, "jobs", "list")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("nightly"))
    assert "in the cluster" in row and f"ok ({job.metadata.name})" in row, out
    note = next(line for line in out.splitlines() if line.startswith("nightly: cronjob/"))
    assert "last scheduled never" in note and "last succeeded" in note, note
    assert "last succeeded never" not in note, note

    code, out, err = _kt(capsys, "jobs", "rm", "nightly")
    assert code == 0, err
    assert f"CronJob/alice-nightly, Job/{job.metadata.name}, ConfigMap/alice-nightly-notebook" \
        in out and "claim alice-nightly-runs kept" in out, out
    assert _names(api, "ml", "kubetorch.dev/job=nightly") == {
        "ConfigMap": [], "PersistentVolumeClaim": ["alice-nightly-runs"], "CronJob": [],
        "Job": []}
    assert _names(api, "ml", "kubetorch.dev/job=weekly") == {
        "ConfigMap": ["alice-weekly-notebook"], "PersistentVolumeClaim": ["alice-weekly-runs"],
        "CronJob": ["alice-weekly"], "Job": []}
    left = {c.metadata.name for c in core.list_namespaced_config_map("ml").items}
    assert {"someone-elses", runtime} <= left
    assert not (jobs_dir() / "nightly" / "job.json").exists()

    code, out, err = _kt(capsys, "jobs", "rm", "weekly", "--purge")
    assert code == 0, err
    assert _names(api, "ml", "kubetorch.dev/job=weekly") == {
        "ConfigMap": [], "PersistentVolumeClaim": [], "CronJob": [], "Job": []}
    assert runtime in {c.metadata.name for c in core.list_namespaced_config_map("ml").items}


def test_a_failing_apply_creates_nothing(on_double: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from kubernetes import client

    cluster, path = on_double
    api = cluster.api_client()
    argv = ["export", str(path), "--backend", "kubernetes", "--schedule", "@daily", "--name",
            "nightly"]
    code, _, err = _kt(capsys, *argv, "--namespace", "nope")
    assert code == 1 and err.count("\n") == 1, err
    assert "namespace 'nope' does not exist" in err and "nothing was created" in err, err
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())

    cluster.forbid("cronjobs")  # RBAC lets this user make ConfigMaps and claims, not CronJobs
    code, _, err = _kt(capsys, *argv, "--namespace", "ml")
    assert code == 1 and err.count("\n") == 1, err
    assert 'cronjobs.batch "alice-nightly" is forbidden' in err, err
    assert ("removed again what it had created (ConfigMap/alice-nightly-notebook, "
            "PersistentVolumeClaim/alice-nightly-runs)") in err, err
    assert _names(api, "ml", "kubetorch.dev/user=alice") == {
        "ConfigMap": [next(c.metadata.name for c in client.CoreV1Api(api)
                           .list_namespaced_config_map("ml").items)],
        "PersistentVolumeClaim": [], "CronJob": [], "Job": []}
    (kept,) = client.CoreV1Api(api).list_namespaced_config_map("ml").items
    assert kept.metadata.labels["kubetorch.dev/component"] == "runtime"  # shared: kept
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())

    cluster.clear()
    code, out, err = _kt(capsys, *argv, "--namespace", "ml")
    assert code == 0 and "applied" in out, err


def test_replace_moves_the_job_and_leaves_no_old_cronjob(
        on_double: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from kubernetes import client

    cluster, path = on_double
    api = cluster.api_client()
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "other"}})
    argv = ["export", str(path), "--schedule", "@daily", "--name", "nightly"]
    k8s = [*argv, "--backend", "kubernetes"]
    assert _kt(capsys, *k8s, "--namespace", "ml")[0] == 0
    assert _kt(capsys, *k8s, "--namespace", "ml", "--replace")[0] == 0  # the same: unchanged
    assert _names(api, "ml", "kubetorch.dev/job=nightly")["CronJob"] == ["alice-nightly"]
    code, _, err = _kt(capsys, *k8s, "--namespace", "other", "--replace")
    assert code == 0, err
    assert _names(api, "other", "kubetorch.dev/job=nightly")["CronJob"] == ["alice-nightly"]
    assert _names(api, "ml", "kubetorch.dev/job=nightly") == {
        "ConfigMap": [], "PersistentVolumeClaim": ["alice-nightly-runs"], "CronJob": [],
        "Job": []}  # the old runs' claim stays, as kt jobs rm leaves it
    code, _, err = _kt(capsys, *argv, "--replace")  # now a crontab line instead
    assert code == 0, err
    assert _names(api, "other", "kubetorch.dev/job=nightly")["CronJob"] == []


def test_kt_jobs_run_exits_with_the_runs_outcome(on_double: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    del on_double  # (the double, its kubeconfig in KT_KUBECONFIG)
    cpu_only = ComputeSpec(name="cpu", cpus=1, backend="kubernetes",
                           image={"base": "ghcr.io/example/kt-jobs:1", "steps": []})
    path = notebook(tmp_path / "fails.ipynb", ["print('before')", "raise ValueError('boom')"],
                    compute=cpu_only)
    code, _, err = _kt(capsys, "export", str(path), "--backend", "kubernetes", "--schedule",
                       "@daily", "--name", "fails", "--namespace", "ml")
    assert code == 0, err
    code, out, err = _kt(capsys, "jobs", "run", "fails")
    assert code == 1, out + err
    assert "before" in out and "ValueError" in out and "failed" in out, out
    code, out, _ = _kt(capsys, "jobs", "logs", "fails", "-f")
    assert code == 1 and "ValueError" in out, out
    code, out, _ = _kt(capsys, "jobs", "list")
    row = next(line for line in out.splitlines() if line.startswith("fails"))
    assert "FAILED (alice-fails-manual-" in row, out


def test_a_run_by_hands_job_name_fits_a_label() -> None:
    import re

    from kubetorch_jupyter.jobs.cluster import manual_job_name

    longest = "alice-" + "n" * 46  # the CronJob's name is at most 52 characters
    for cronjob in ("alice-nightly", longest, longest[:48] + "-x-y"):
        name = manual_job_name(cronjob)
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert "-manual-" in name and name.startswith(cronjob[:40])


def test_kt_jobs_of_a_kubernetes_job_without_a_cluster_say_what_to_set(
        exported: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KT_KUBECONFIG", str(tmp_path / "missing"))
    code, _, err = _kt(capsys, "jobs", "run", "nightly")
    assert code == 1 and err.count("\n") == 1, err
    assert "does not exist: point KT_KUBECONFIG" in err and "--here" in err, err
    code, out, _ = _kt(capsys, "jobs", "list")  # --dry-run: nothing in a cluster to ask
    assert code == 0 and "not applied" in out and "kubectl apply -f" in out, out
    code, out, _ = _kt(capsys, "jobs", "rm", "nightly")
    assert code == 0 and "kubectl delete -n ml" in out, out
