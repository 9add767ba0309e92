"""The README's generated tables say what the code does (settings, pod variables, API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kubetorch_jupyter import config, docs
from pod_runtime.settings import POD_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _generator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetorch_jupyter.docs", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env or dict(os.environ))


def test_the_readme_tables_are_what_the_generator_writes() -> None:
    stale = docs.check(README)
    assert not stale, (f"README.md's {', '.join(stale)} table(s) differ from the code; "
                       f"run: {docs.FIX_COMMAND}")


def test_each_setting_and_pod_variable_has_its_row() -> None:
    text = README.read_text(encoding="utf-8")
    client = text[slice(*docs._span(text, "settings"))]
    pod = text[slice(*docs._span(text, "pod-settings"))]
    for s in config.SETTINGS.values():
        assert f"| `{s.env}` |" in client, s.env
    for env in POD_SETTINGS:
        assert f"| `{env}` |" in pod, env


def test_a_stale_readme_is_caught_and_one_command_fixes_it(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    # a setting the code has but the README lacks (as after adding a row to config.py)
    stale.write_text(text.replace("| `KT_SHM` |", "| `KT_SHM_OLD` |")
                     .replace("| `KT_POD_NAME` |", "| `KT_POD_NAMED` |"), encoding="utf-8")
    checked = _generator("--check", str(stale))
    assert checked.returncode == 1
    assert "settings, pod-settings" in checked.stderr and docs.FIX_COMMAND in checked.stderr
    written = _generator("--write-readme", str(stale))
    assert written.returncode == 0, written.stderr
    assert stale.read_text(encoding="utf-8") == text
    assert _generator("--check", str(stale)).returncode == 0


def test_defaults_that_depend_on_the_machine_render_the_same_for_everyone(tmp_path: Path
                                                                          ) -> None:
    outputs = set()
    for home, user, xdg in [(str(tmp_path / "a"), "alice", None),
                            (str(tmp_path / "b"), "Bob.Smith", str(tmp_path / "xdg"))]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KT_")}
        env.update(HOME=home, USER=user, LOGNAME=user)
        env.pop("XDG_STATE_HOME", None)
        if xdg is not None:
            env["XDG_STATE_HOME"] = xdg
        out = _generator(env=env)
        assert out.returncode == 0, out.stderr
        assert home not in out.stdout and user not in out.stdout
        outputs.add(out.stdout)
    assert len(outputs) == 1


def test_a_readme_without_markers_gets_a_message_not_a_traceback(tmp_path: Path) -> None:
    bare = tmp_path / "README.md"
    bare.write_text("# nothing here\n", encoding="utf-8")
    out = _generator("--write-readme", str(bare))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "kubetorch_jupyter.docs: the README has no <!-- settings:start --> ... "
        "<!-- settings:end --> block; add one where the settings table belongs"]
    assert bare.read_text(encoding="utf-8") == "# nothing here\n"
