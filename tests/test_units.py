"""Small pure pieces: resource parsing, images, configuration, error rendering."""

from __future__ import annotations

import pytest

import kubetorch_jupyter as kt
from kernel_bridge.errors import RemoteError, as_remote
from kubetorch_jupyter import config
from kubetorch_jupyter.core.resources import format_bytes, parse_cpus, parse_duration, parse_memory


@pytest.mark.parametrize(("text", "expected"), [
    ("512Mi", 512 * 2**20), ("16Gi", 16 * 2**30), ("1G", 10**9), ("1.5Gi", int(1.5 * 2**30)),
    (1024, 1024), ("2048", 2048), (None, None),
])
def test_memory_quantities(text: object, expected: int | None) -> None:
    assert parse_memory(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "hint"), [
    ("8Gb", "8Gi"), ("512MB", "512Mi"), ("4g", "4Gi"), ("lots", "16Gi"), ("-1", "16Gi"),
])
def test_memory_mistakes_suggest_the_right_spelling(text: str, hint: str) -> None:
    with pytest.raises(kt.ConfigError, match=hint):
        parse_memory(text)


def test_cpus_and_durations() -> None:
    assert parse_cpus("500m") == 0.5
    assert parse_cpus(2) == 2.0
    with pytest.raises(kt.ConfigError):
        parse_cpus(0)
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration(600) == 600
    assert parse_duration("90") == 90
    with pytest.raises(kt.ConfigError, match="30m"):
        parse_duration("1 hour")
    assert format_bytes(16 * 2**30) == "16Gi"


def test_images_compose_and_hash_by_content() -> None:
    base = kt.Image().pip_install(["numpy"])
    a = base.pip_install("torch==2.13.0").set_env_vars({"HF_HOME": "/cache"})
    b = base.pip_install("torch==2.13.0").set_env_vars({"HF_HOME": "/other"})
    assert a.content_hash() == b.content_hash()  # env vars do not change the environment
    assert a.content_hash() != base.content_hash()
    assert a.env == {"HF_HOME": "/cache"}
    assert a.needs_build and not kt.Image().set_env_vars({"A": "1"}).needs_build
    assert "pip_install(['numpy'])" in repr(base)
    with pytest.raises(kt.ConfigError):
        kt.Image().pip_install([])
    with pytest.raises(kt.ConfigError):
        kt.Image().set_env_vars({"A=B": "1"})


def test_config_reads_the_environment_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_START_TIMEOUT", "5")
    assert config.get("start_timeout") == 5.0
    monkeypatch.setenv("KT_START_TIMEOUT", "soon")
    with pytest.raises(kt.ConfigError, match="KT_START_TIMEOUT"):
        config.get("start_timeout")
    monkeypatch.setenv("KT_SHM", "off")
    assert config.get("shm") is False
    assert any(env == "KT_BACKEND" for env, _, _ in config.describe())


def test_remote_errors_become_the_original_type_when_possible() -> None:
    err = as_remote((KeyError, ("k",), {}), "KeyError", "'k'", "Traceback...\nKeyError", "p")
    assert isinstance(err, KeyError) and isinstance(err, RemoteError)
    assert err.args == ("k",) and err.pod == "p"
    assert "Traceback" in "\n".join(err._render_traceback_())

    class Strict(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(a)
            self.b = b

    err = as_remote((Strict, (1,), {"b": 2}), "Strict", "1", "tb", None)
    assert isinstance(err, Strict) and err.b == 2

    plain = as_remote(None, "mod.Unknown", "msg", "tb", "p")
    assert isinstance(plain, RemoteError) and plain.remote_type == "mod.Unknown"
    assert (type(plain).__module__, type(plain).__name__, str(plain)) == ("mod", "Unknown", "msg")

    syntax = as_remote((SyntaxError, ("never closed", ("<kt In[3] ab>", 2, 5, "x = (1,\n", 2, 6)),
                        {}), "SyntaxError", "never closed", "tb", "p")
    assert isinstance(syntax, SyntaxError)  # its C attributes are set, as for a local one
    assert (syntax.msg, syntax.filename, syntax.lineno) == ("never closed", "<kt In[3] ab>", 2)


def test_progress_bars_only_where_someone_can_see_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.core import progress as _progress

    monkeypatch.setattr(_progress, "_terminal", lambda: False)  # a pipe, a CI log
    assert _progress.progress_bar(enabled=True, total=1).disable
    monkeypatch.setattr(_progress, "_terminal", lambda: True)
    bar = _progress.progress_bar(enabled=True, total=1)
    assert not bar.disable
    bar.close()
    assert _progress.progress_bar(enabled=False, total=1).disable


def test_notebooks_show_our_errors_without_our_stack() -> None:
    err = kt.ResourceUnavailableError("asked for 1 GPU; this machine has 0 GPUs",
                                      requested=1, available=0)
    assert err._render_traceback_() == [
        "ResourceUnavailableError: asked for 1 GPU; this machine has 0 GPUs"]
    remote = as_remote(None, "ValueError", "bad", "Traceback...\nValueError: bad", "p")
    assert "Traceback..." in remote._render_traceback_()[1]  # remote ones keep theirs


def test_one_name_rule_and_the_username_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.core import names

    monkeypatch.setenv("KT_USERNAME", "alice")
    assert names.pod_name("dev") == "alice-dev"
    assert names.pod_name("dev", "bob") == "bob-dev"
    longest = "a" * (63 - len("alice-"))
    assert len(names.pod_name(longest)) == 63  # a DNS-1123 label's limit, exactly
    for bad, hint in (("My Pod", "'my-pod'"), ("1st", "'c-1st'"), ("dev-", "'dev'"),
                      ("a_b.c", "'a-b-c'"), (longest + "a", f"{longest!r}"), ("", "'dev'")):
        with pytest.raises(kt.ConfigError, match=f"compute name .* is not valid.*{hint}"):
            names.check_name(bad)
    with pytest.raises(kt.ConfigError, match="at most 57 characters"):
        kt.Compute(name=longest + "a")  # the Compute and the backends share the rule
    from kubetorch_jupyter.backends.local.backend import LocalBackend
    with pytest.raises(kt.ConfigError, match="'my-pod'"):
        LocalBackend().get("My_Pod")
    monkeypatch.setenv("KT_USERNAME", "Not Valid")
    with pytest.raises(kt.ConfigError, match=r"KT_USERNAME='Not Valid' is not valid.*'not-valid'"):
        names.pod_name("dev")
