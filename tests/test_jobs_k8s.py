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


