"""Notebook cells on the pod: what ``%%kt`` runs, with the semantics of a local cell.

A cell runs on the pod's main thread (the client sets ``FLAG_MAIN_THREAD``), so that an
interrupt is a real SIGINT that stops even ``time.sleep``. As in an IPython kernel:

* all cells share one namespace (:attr:`Executor.namespace`) for the pod's life, which
  is also ``sys.modules["__main__"]`` (classes defined in cells pickle by reference);
* the value of the last expression is the cell's result: a ``result`` event carrying
  its MIME bundle (a trailing ``;`` hides it); ``_``, ``__`` and ``___`` keep the last
  three;
* ``display()`` sends ``display`` events (``clear_output`` and display ids too), and
  matplotlib figures are sent as PNG when ``plt.show()`` is called or the cell ends
  (backend ``module://pod_runtime.mpl_backend``), like ipykernel's inline backend;
* top-level ``await`` works;
* the cell is compiled under the file name the client chose (and its source put in
  ``linecache``), with line numbers counted as in the notebook's cell, so a remote
  traceback points at the cell's own lines.

IPython is optional on the pod. With it (unless ``KT_POD_IPYTHON=0``), a cell may use
``!cmd``, ``%magics`` and ``%%cell magics`` and values are formatted by IPython's
formatters; without it, cells are plain Python and reprs come from the ``_repr_*_``
methods.

Call kinds registered here (``msg`` -> value):

==============  ==========================================================  ============
kind            message                                                     value
==============  ==========================================================  ============
``cell``        ``source``, ``filename``, ``first_line``, ``push`` (dict),  ``{"pulled"}``
                ``pull`` (names), ``label``; with ``detach`` it only        ``{"run"}``
                queues the cell as a new call nobody is subscribed to and
                returns that call's id (see ``%kt attach``)
``cell_vars``   ``push``, ``pull`` (runs on a worker: works while a cell    ``{"pulled"}``
                runs)
``cell_runs``   (nothing): every cell run the pod still holds (queued,      ``[RunInfo]``
                running, or finished and not collected: detached runs, and
                orphans whose kernel went away), with who follows each
==============  ==========================================================  ============
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import io
import linecache
import os
import secrets
import sys
import threading
from typing import Any, cast

from . import capture, mimebundle, protocol, settings
from .executor import Executor
from .protocol import messages
from .records import CallRecord
from .registry import register

__all__ = ["CellRuntime", "get_runtime", "show_figures"]

#: The matplotlib backend cells use (Agg, with ``show()`` sending PNGs to the cell).
MPL_BACKEND = "module://pod_runtime.mpl_backend"
#: MPLBACKEND values a pod cannot use (they need a kernel or a display) and replaces.
_FOREIGN_BACKENDS = ("inline", "ipympl", "widget", "nbagg", "notebook", "tk", "qt", "gtk", "wx",
                     "macosx")
_HERE = os.path.dirname(os.path.abspath(__file__))
_runtime: CellRuntime | None = None
_runtime_lock = threading.Lock()
#: Held while a detached run's id is chosen and its record made.
_runs_lock = threading.Lock()


class _MainModule:
    """A stand-in module whose ``__dict__`` is the cell namespace (as IPython does)."""


class CellRuntime:
    """Runs cells in the executor's namespace and sends their output as events.

    Args:
        executor: The pod's executor (its namespace is the cells' namespace).
        use_ipython: Use IPython for syntax and formatting; default: when it is
            installed and ``KT_POD_IPYTHON`` is not ``0``.
    """

    def __init__(self, executor: Executor, *, use_ipython: bool | None = None) -> None:
        self.executor = executor
        self.ns = executor.namespace
        self.main_module = _MainModule()
        self.main_module.__dict__ = self.ns
        sys.modules["__main__"] = self.main_module  # type: ignore[assignment]
        self._shown: set[int] = set()
        self._last: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ns.setdefault("_", "")
        self.ns.setdefault("__", "")
        self.ns.setdefault("___", "")
        _use_pod_backend()
        if use_ipython is None:
            use_ipython = bool(settings.get("KT_POD_IPYTHON")) and (
                importlib.util.find_spec("IPython") is not None)
        self.shell = _make_shell(self) if use_ipython else None
        if self.shell is None:
            self.ns.setdefault("display", self.display)

    # --------------------------------------------------------------- events
    def emit(self, event: dict[str, Any]) -> None:
        """Send an event to the call running on this thread (else to the pod's log)."""
        record = capture.current()
        if record is None:
            text = (event.get("data") or {}).get("text/plain")
            if text:
                print(text, file=sys.__stdout__)
            return
        self.executor.emit(record, event)

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, *,
                transient: dict[str, Any] | None = None, update: bool = False,
                kind: str = "display") -> None:
        """Send display data (a MIME bundle), JSON-safe, to the running call."""
        event: dict[str, Any] = {"kind": kind, "data": mimebundle.clean_bundle(data),
                                 "metadata": mimebundle.clean(metadata or {})}
        if transient:
            event["transient"] = mimebundle.clean(transient)
        if update:
            event["update"] = True
        self.emit(event)

    def display(self, *objs: Any, **kwargs: Any) -> None:
        """``display()`` for pods without IPython: each object's MIME bundle."""
        for obj in objs:
            data, md = self.format(obj)
            self.publish(data, md)

    # ----------------------------------------------------------- formatting
    def format(self, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The MIME bundle (data, metadata) of ``value``, as IPython would show it."""
        if self.shell is not None:
            data, md = self.shell.display_formatter.format(value)
            return dict(data), dict(md)
        return mimebundle.plain_format(value, self.figure_png)

    def figure_png(self, fig: Any) -> bytes | None:
        """Render a matplotlib figure to PNG (None for an empty figure)."""
        if not fig.axes and not fig.lines:
            return None
        buf = io.BytesIO()
        fig.canvas.print_figure(buf, format="png", bbox_inches="tight", dpi=fig.dpi,
                                facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor())
        self._shown.add(id(fig))
        return buf.getvalue()

    def show_figures(self, *, close: bool = True) -> None:
        """Send the open pyplot figures not shown yet in this cell, then close them all."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        from matplotlib._pylab_helpers import Gcf

        for manager in Gcf.get_all_fig_managers():
            fig = manager.canvas.figure
            if id(fig) in self._shown:
                continue
            try:
                png = self.figure_png(fig)
            except Exception as exc:  # noqa: BLE001 - one bad figure must not hide the rest
                print(f"[kubetorch] could not render {fig!r}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            if png is not None:
                self.publish({"image/png": png, "text/plain": repr(fig)})
        if close:
            plt.close("all")

    # -------------------------------------------------------------- running
    def run(self, msg: messages.CellCall, record: CallRecord) -> dict[str, Any]:
        """Run one cell message; return the pulled variables."""
        self.ns.update(msg.get("push") or {})
        source = str(msg.get("source", ""))
        filename = msg.get("filename") or f"<kt cell {record.call_id:x}>"
        first_line = max(1, int(msg.get("first_line") or 1))
        self._shown.clear()
        try:
            self.execute(source, filename, first_line)
        finally:
            self.show_figures()
        return {"pulled": pull(self.executor, msg.get("pull") or ())}

    def execute(self, source: str, filename: str, first_line: int = 1) -> None:
        """Run ``source`` like an IPython cell: statements, then the last expression shown."""
        pad = "\n" * (first_line - 1)
        text = pad + source
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        code = pad + self.transform(source)
        try:
            tree = ast.parse(code, filename)
        except SyntaxError as exc:  # shown as Python shows it: file, line, caret; no frames
            raise exc.with_traceback(None) from None
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            tree.body.pop()
        else:
            last = None
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        if tree.body:
            self._eval(compile(tree, filename, "exec", flags=flags, dont_inherit=True), filename)
        if last is not None:
            expr = ast.Expression(last.value)
            value = self._eval(compile(expr, filename, "eval", flags=flags, dont_inherit=True),
                               filename)
            if not _semicolon_after(code, last):
                self.display_result(value)

    def transform(self, source: str) -> str:
        """IPython syntax (``!cmd``, ``%magic``) to Python, when IPython is here."""
        if self.shell is None:
            return source
        return str(self.shell.transform_cell(source))

    def _eval(self, code: Any, filename: str) -> Any:
        try:
            value = eval(code, self.ns)  # running the user's cell is the point
            if code.co_flags & inspect.CO_COROUTINE:
                if self._loop is None or self._loop.is_closed():
                    self._loop = asyncio.new_event_loop()
                value = self._loop.run_until_complete(value)
            return value
        except BaseException as exc:  # noqa: BLE001 - re-raised as is, its traceback trimmed
            raise exc.with_traceback(_from_cell(exc.__traceback__, filename))  # noqa: B904

    def display_result(self, value: Any) -> None:
        """The cell's result: update ``_``/``__``/``___`` and send its MIME bundle."""
        if value is None:
            return
        ns = self.ns
        current = ns.get("_", "")
        if current is self._last or (isinstance(current, str) and not current):
            # the user did not rebind `_` themselves
            ns["___"], ns["__"], ns["_"] = ns.get("__", ""), ns.get("_", ""), value
            self._last = value
        data, md = self.format(value)
        if data:
            self.publish(data, md, kind="result")


def get_runtime(executor: Executor) -> CellRuntime:
    """The pod's cell runtime, created on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.executor is not executor:
            _runtime = CellRuntime(executor)
        return _runtime


def show_figures() -> None:
    """``plt.show()`` on a pod: send open figures to the running call (see mpl_backend)."""
    if _runtime is not None:
        _runtime.show_figures()


def pull(executor: Executor, names: Any) -> dict[str, Any] | None:
    """The values of ``names`` in the cell namespace, each checked to be picklable."""
    if not names:
        return None
    out = {}
    for name in names:
        try:
            value = executor.namespace[name]
        except KeyError:
            raise NameError(f"name {name!r} is not defined on pod {executor.pod_name!r}, "
                            "so it cannot be pulled") from None
        try:
            protocol.dumps(value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure, named below
            typ = type(value)
            raise TypeError(
                f"{name} (a {typ.__module__}.{typ.__qualname__}) cannot be pulled: it does not "
                f"pickle ({type(exc).__name__}: {exc}). Pull plain data derived from it, or "
                "keep it on the pod") from None
        out[name] = value
    return out


# ---------------------------------------------------------------- handlers
@register("cell", main_thread=True)
def _run_cell(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.CellCall, body)
    if msg.get("detach"):
        return _detach(ex, msg)
    record.label = str(msg.get("label") or "%%kt cell")
    try:
        value = get_runtime(ex).run(msg, record)
    except BaseException:
        record.outcome = "failed"
        raise
    record.outcome = "ok"
    return value


def _detach(ex: Executor, msg: messages.CellCall) -> dict[str, int]:
    """Queue the cell as a call of its own that no connection is subscribed to."""
    queued: messages.CellCall = {**msg, "detach": False}
    body, buffers = protocol.dumps(queued)
    refs = [protocol.BufferRef(protocol.BUFFER_INLINE, b.nbytes, view=b) for b in buffers]
    with _runs_lock:
        run_id = secrets.randbits(63)
        while run_id in ex.records:
            run_id = secrets.randbits(63)
        record = CallRecord(run_id, None)
        record.label = str(msg.get("label") or "%%kt --detach cell")
        record.detached = True
    ex.submit(record, memoryview(body), refs, main_thread=True)
    return {"run": run_id}


@register("cell_vars")
def _cell_vars(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.CellVarsCall, body)
    record.label = "%kt push/pull"
    ex.namespace.update(msg.get("push") or {})
    return {"pulled": pull(ex, msg.get("pull") or ())}


@register("cell_runs")
def _cell_runs(ex: Executor, msg: dict[str, Any], record: CallRecord) -> list[messages.RunInfo]:
    record.label = "%kt runs"
    runs = [ex.run_info(rec, record.owner) for rec in list(ex.records.values())
            if rec.main_thread]
    # a finished run someone follows is on its way to that client: not worth a line
    runs = [r for r in runs if r["finished"] is None or r["client"] in ("detached", "gone")]
    return sorted(runs, key=lambda r: r["created"])


# ----------------------------------------------------------------- helpers
def _make_shell(runtime: CellRuntime) -> Any | None:
    """An IPython InteractiveShell whose display publisher sends events to the cell."""
    try:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets import Type
        from traitlets.config import Config
    except ImportError:
        return None

    class PodDisplayPublisher(DisplayPublisher):  # type: ignore[misc]
        """Sends ``display()`` output to the running call."""

        def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **kwargs: Any) -> None:
            runtime.publish(data, metadata, transient=transient, update=update)

        def clear_output(self, wait: bool = False) -> None:
            event: messages.ClearOutputEvent = {"kind": "clear_output", "wait": bool(wait)}
            runtime.emit(dict(event))

    class PodShell(InteractiveShell):  # type: ignore[misc]
        """The pod's shell: IPython syntax and formatters, output through the bridge."""

        display_pub_class = Type(PodDisplayPublisher)

        def enable_gui(self, gui: Any = None) -> None:
            """No GUI event loop on a pod."""

        def enable_matplotlib(self, gui: Any = None) -> tuple[Any, str]:
            """``%matplotlib [inline|...]`` in a cell: on a pod, figures go to the cell."""
            import matplotlib

            matplotlib.use(MPL_BACKEND)
            return gui or "inline", MPL_BACKEND

    if InteractiveShell.initialized():  # someone's code made one: take it over
        shell = InteractiveShell.instance()
        shell.display_pub = PodDisplayPublisher(shell=shell, parent=shell)
    else:
        config = Config()
        config.HistoryManager.enabled = False
        shell = PodShell.instance(config=config, user_module=runtime.main_module)
    assert shell.display_formatter is not None
    png = shell.display_formatter.formatters["image/png"]
    png.for_type_by_name("matplotlib.figure", "Figure", runtime.figure_png)
    return shell


def _use_pod_backend() -> None:
    """Point matplotlib at the pod backend unless the user chose a usable one."""
    current = os.environ.get("MPLBACKEND", "").lower()
    if current and not any(name in current for name in _FOREIGN_BACKENDS):
        return
    os.environ["MPLBACKEND"] = MPL_BACKEND
    mpl = sys.modules.get("matplotlib")
    if mpl is not None:  # imported before the first cell (by a kt.fn call)
        try:
            mpl.use(MPL_BACKEND)
        except Exception as exc:  # noqa: BLE001
            print(f"[kubetorch] could not switch matplotlib to the pod backend: {exc}",
                  file=sys.stderr)


def _from_cell(tb: Any, filename: str) -> Any:
    """The traceback from the cell's frame on, without the pod runtime's frames.

    Frames above the cell's (an event loop's) go, and so do the runtime's own frames at
    the end (the SIGINT handler that raised an interrupt).
    """
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename != filename:
        start = start.tb_next
    if start is None:
        start = tb
    last_user = None
    node = start
    while node is not None:
        if os.path.dirname(os.path.abspath(node.tb_frame.f_code.co_filename)) != _HERE:
            last_user = node
        node = node.tb_next
    if last_user is not None:
        last_user.tb_next = None
    return start


def _semicolon_after(code: str, node: ast.AST) -> bool:
    """Whether a ``;`` follows the last expression (IPython: hide the result)."""
    lines = code.splitlines(True)
    end_line = getattr(node, "end_lineno", None)
    end_col = getattr(node, "end_col_offset", None)
    if end_line is None or end_col is None or end_line > len(lines):
        return False
    rest = lines[end_line - 1].encode()[end_col:].decode(errors="replace")
    return rest.lstrip().startswith(";")
