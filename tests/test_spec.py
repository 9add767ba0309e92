"""ComputeSpec: JSON round trip, one canonical hash, a human diff; Compute.spec builds it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import kubetorch_jupyter as kt
from kubetorch_jupyter.core.spec import ComputeSpec


def full() -> ComputeSpec:
    image = kt.Image().pip_install(["numpy"]).set_env_vars({"HF_HOME": "/cache"})
    return ComputeSpec(name="dev", cpus=2, memory=4 * 2**30, gpus=1, image=image.to_json(),
                       env={"FOO": "1"}, inactivity_ttl=600, backend="local",
                       kubernetes={"node_selector": {"pool": "a100"}})


def test_json_round_trip_through_text() -> None:
    spec = full()
    text = json.dumps(spec.to_json())
    back = ComputeSpec.from_json(json.loads(text))
    assert back == spec and back.spec_hash() == spec.spec_hash()
    assert back.build_image() == spec.build_image()
    assert back.kubernetes["node_selector"] == {"pool": "a100"}
    assert spec.to_json()["image_hash"] == spec.build_image().content_hash()
    assert spec.pod_env == {"HF_HOME": "/cache", "FOO": "1"}


def test_unknown_keys_from_a_newer_client_are_ignored() -> None:
    data = {**full().to_json(), "schema": 99, "priority_class": "high", "volumes": [{"a": 1}]}
    assert ComputeSpec.from_json(data) == full()
    with pytest.raises(ValueError, match="needs a name"):
        ComputeSpec.from_json({"cpus": 1})


def test_a_record_of_the_older_client_still_reads() -> None:
    image = kt.Image().set_env_vars({"FROM_IMAGE": "yes"})
    old = {"cpus": 1.0, "memory": None, "gpus": 0, "image": image.content_hash(),
           "env": {"FROM_IMAGE": "yes", "OWN": "1"}, "inactivity_ttl": None,
           "definition": {"image": image.to_json(), "env": {"OWN": "1"}}, "name": "defined"}
    spec = ComputeSpec.from_json(old)
    assert spec.build_image() == image and dict(spec.env) == {"OWN": "1"} and spec.cpus == 1


def test_frozen() -> None:
    spec = full()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cpus = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["FOO"] = "2"  # type: ignore[index]
    assert len({full(), full()}) == 1  # hashable, by value


def test_one_canonical_hash() -> None:
    a = ComputeSpec(name="dev", env={"B": "2", "A": "1"}, cpus="1")  # type: ignore[arg-type]
    b = ComputeSpec(name="dev", env={"A": "1", "B": "2"}, cpus=1.0)
    assert a.spec_hash() == b.spec_hash() and len(a.spec_hash()) == 16
    assert a.spec_hash() != dataclasses.replace(a, gpus=1).spec_hash()
    # a field at its default is not part of the hash: new fields leave old hashes alone
    canonical = json.dumps({"name": "dev"}, sort_keys=True, separators=(",", ":"))
    import hashlib
    assert ComputeSpec(name="dev").spec_hash() == hashlib.sha256(
        canonical.encode()).hexdigest()[:16]
    # and another process (another hash seed) computes the same
    code = ("from kubetorch_jupyter.core.spec import ComputeSpec as S\n"
            "print(S(name='dev', env={'B': '2', 'A': '1'}, cpus=1).spec_hash())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == a.spec_hash()


def test_diff_in_words() -> None:
    old = ComputeSpec(name="dev", memory=4 * 2**30, env={"KEEP": "1", "GONE": "x", "EDIT": "a"})
    torch = kt.Image().pip_install(["torch"])
    new = ComputeSpec(name="dev", memory=8 * 2**30, gpus=1, cpus=2, inactivity_ttl=60,
                      env={"KEEP": "1", "FOO": "secret", "EDIT": "b"}, image=torch.to_json())
    lines = old.diff(new)
    assert lines == ["cpus default -> 2", "memory 4Gi -> 8Gi", "gpus 0 -> 1",
                     "inactivity_ttl default -> 60s", "env EDIT changed", "env FOO added",
                     "env GONE removed", "image changed (pip_install torch)"]
    assert "secret" not in " ".join(lines)  # values of variables may be secrets
    assert new.diff(old)[-1] == "image changed (without pip_install torch)"
    assert old.diff(old) == []


def test_compute_builds_its_spec_and_back() -> None:
    image = kt.Image().run_bash("true")
    compute = kt.Compute(name="dev", cpus="500m", memory="1Gi", image=image, env={"A": "1"},
                         inactivity_ttl="30m")
    spec = compute.spec
    assert (spec.name, spec.cpus, spec.memory, spec.inactivity_ttl) == ("dev", 0.5, 2**30, 1800)
    assert spec.build_image() == image and spec.backend == "local"
    again = kt.Compute.from_spec(spec)
    assert again.spec == spec and again.image == image
