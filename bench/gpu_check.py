"""GPU check, for a machine with an NVIDIA GPU: per-cell GPU figures and /metrics GPU series.

    python bench/gpu_check.py [--seconds 5]

Starts a ``gpus=1`` local pod, runs a torch matmul loop for a few seconds in a
``%%kt --stats`` cell (through IPython, as a notebook would) and through ``kt.fn``,
then prints the cell's stats line, the call's ``CallStats`` and the pod's ``kt_gpu_*``
series. Needs ``torch`` with CUDA and ``nvidia-ml-py`` (the ``gpu`` extra) in this
environment; the pod inherits it. Exits 1 with the reason when something is missing.
What it printed on a GPU machine is worth recording beside the change it checks.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import urllib.request

MATMUL = """
import time, torch
x = torch.randn(8192, 8192, device="cuda")
deadline = time.monotonic() + {seconds}
n = 0
while time.monotonic() < deadline:
    y = x @ x
    n += 1
torch.cuda.synchronize()
print("matmuls:", n, "peak allocated:", torch.cuda.max_memory_allocated() >> 20, "MiB")
"""


def matmul(seconds: float) -> int:
    import time

    import torch

    x = torch.randn(8192, 8192, device="cuda")
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        x @ x
        n += 1
    torch.cuda.synchronize()
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import pynvml  # noqa: F401
        import torch
    except ImportError as exc:
        print(f"gpu_check: {exc.name} is not installed here (pip install torch "
              "nvidia-ml-py)", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU on this machine", file=sys.stderr)
        return 1
    os.environ.setdefault("KT_STATE_DIR", tempfile.mkdtemp(prefix="kt-gpu-check-"))
    os.environ.setdefault("KT_PROGRESS", "0")
    from IPython.core.interactiveshell import InteractiveShell

    import kubetorch_jupyter as kt

    name = f"gpucheck-{os.getpid()}"
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kubetorch_jupyter")
    try:
        print(f"--- %%kt --gpus 1 --stats cell ({args.seconds:g} s of 8192x8192 matmuls)")
        shell.run_cell_magic("kt", f"--gpus 1 --name {name} --stats",
                             MATMUL.format(seconds=args.seconds))
        compute = kt.Compute.from_name(name)
        print("--- kt.fn(matmul).submit(...).stats")
        handle = kt.fn(matmul).to(compute).submit(args.seconds)
        print("matmuls:", handle.result())
        print(handle.stats)
        print(repr(handle.stats))
        print("--- /metrics GPU series")
        port = re.search(r":(\d+)", compute.pod.url.split("//", 1)[1])
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
        gpu_lines = [ln for ln in text.splitlines() if ln.startswith("kt_gpu_")]
        print("\n".join(gpu_lines) or "(no kt_gpu_ series: NVML not read on the pod)")
        return 0 if gpu_lines and handle.stats and handle.stats.gpus else 1
    finally:
        from kubetorch_jupyter.manager import ComputeManager

        if any(c.name == name for c in ComputeManager().list()):
            ComputeManager().stop(name)


if __name__ == "__main__":
    raise SystemExit(main())
