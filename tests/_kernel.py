"""A real ipykernel driven through jupyter_client, for tests and the bench.

``Kernel.execute`` sends an execute request (optionally on a subshell, so that two cells
are in flight at once) and returns its msg_id; ``Kernel.collect`` reads IOPub until
every given request is idle and returns each one's messages, grouped by the
``parent_header`` they carry: exactly what a notebook frontend uses to decide which
cell an output belongs to.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager


@dataclass
class Cell:
    """What one execute request produced."""

    msg_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    idle: bool = False

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    def stream(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[0]["content"] if errors else None


class Kernel:
    """A python3 ipykernel in its own process, with ``env`` added to its environment."""

    def __init__(self, env: dict[str, str], *, cwd: Path | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, **env}, cwd=str(cwd) if cwd else None)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.cells: dict[str, Cell] = {}

    def execute(self, code: str, *, subshell: str | None = None) -> str:
        """Send ``code`` for execution; return the request's msg_id at once."""
        msg = self.kc.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False})
        if subshell is not None:
            msg["header"]["subshell_id"] = subshell
        self.kc.shell_channel.send(msg)
        mid = str(msg["header"]["msg_id"])
        self.cells[mid] = Cell(mid)
        return mid

    def subshell(self) -> str:
        """Create a kernel subshell (ipykernel >= 7): its cells run beside the main ones."""
        msg = self.kc.session.msg("create_subshell_request", {})
        self.kc.control_channel.send(msg)
        reply = self.kc.control_channel.get_msg(timeout=30)
        assert reply["content"]["status"] == "ok", reply["content"]
        return str(reply["content"]["subshell_id"])

    def collect(self, *msg_ids: str, timeout: float = 60.0,
                until: Any = None) -> dict[str, Cell]:
        """IOPub messages of ``msg_ids`` until each is idle (or ``until(cells)`` is true).

        Messages are kept per request across calls, so a second ``collect`` of a cell
        continues where an earlier one (stopped by ``until``) left off.
        """
        cells = {mid: self.cells[mid] for mid in msg_ids}
        deadline = time.monotonic() + timeout
        while not all(c.idle for c in cells.values()):
            if until is not None and until(cells):
                return cells
            left = deadline - time.monotonic()
            if left <= 0:
                seen = {k: [m["msg_type"] for m in c.messages] for k, c in cells.items()}
                raise TimeoutError(f"kernel cells not idle after {timeout}s: {seen}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            cell = self.cells.get(msg["parent_header"].get("msg_id"))
            if cell is None:
                continue
            if msg["msg_type"] == "status":
                cell.idle = cell.idle or msg["content"]["execution_state"] == "idle"
                continue
            cell.messages.append(msg)
        self._replies(cells)
        return cells

    def _replies(self, cells: dict[str, Cell]) -> None:
        deadline = time.monotonic() + 10
        while any(c.reply is None for c in cells.values()) and time.monotonic() < deadline:
            try:
                msg = self.kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                continue
            cell = self.cells.get(msg["parent_header"].get("msg_id"))
            if cell is not None:
                cell.reply = msg["content"]

    def run(self, code: str, *, timeout: float = 60.0) -> Cell:
        """Execute ``code`` and wait for it; the cell's outputs."""
        mid = self.execute(code)
        return self.collect(mid, timeout=timeout)[mid]

    def restart(self) -> None:
        """Restart the kernel process (what the notebook's "Restart kernel" does)."""
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def die_and_restart(self) -> None:
        """The kernel process dies at once (a crash, or a restart whose kill beats its
        interrupt), then a new one starts: nothing it ran gets to clean up."""
        import signal

        process = self.km.provisioner.process  # the local provisioner's Popen
        self.km.signal_kernel(signal.SIGKILL)
        process.wait(timeout=30)
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def interrupt(self) -> None:
        """Interrupt the kernel (the notebook's stop button: SIGINT)."""
        self.km.interrupt_kernel()

    def shutdown(self) -> None:
        """Stop the kernel process and close the channels."""
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def start_kernel(state: Path) -> Kernel:
    """A kernel on the local backend's ``state`` dir, with the extension loaded."""
    k = Kernel({"KT_STATE_DIR": str(state), "KT_PROGRESS": "0"})
    try:
        cell = k.run("%load_ext kubetorch_jupyter")
        assert cell.reply is not None and cell.reply["status"] == "ok", cell.messages
    except BaseException:
        k.shutdown()
        raise
    return k
