"""The pod runtime: the small server that runs inside every pod.

``python -m pod_runtime`` serves the bridge's websocket endpoint, runs functions, class
instances and notebook cells, and answers ``/healthz``, ``/ready`` and ``/metrics``.
It depends only on the standard library, ``websockets`` and ``cloudpickle``, and never
imports ``kernel_bridge`` or ``kubetorch_jupyter``.
"""

__version__ = "0.1.0"
