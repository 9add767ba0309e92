"""A test double of the Kubernetes API server that also plays the scheduler and kubelet.

No API server can run on these machines, so Kubernetes code is tested against this:
the official ``kubernetes`` client talks to it over HTTP on loopback, and applied
Deployments, StatefulSets, Jobs, Knative Services and RayClusters become real local
processes (one per container, each pod on its own loopback address 127.R.S.N), reachable through the
pods' ``portforward`` subresource.

Why our own server and not a subclass of ``kmock`` (0.8, by Kopf's author): kmock's
emulator stores objects as merged dicts with a fixed list resourceVersion (``'...'``),
no ``uid``/``generation``/``resourceVersion`` on objects, no status subresources, no
``Status`` error bodies, no selectors, a watch without resourceVersion history, and no
websockets. Fixing that would override nearly every handler it has (create, update,
delete, list, watch, fetch), and the kubelet, scheduler, GC and port-forward are new
either way; a small aiohttp server of our own is less code and each behaviour can follow
the API concepts document directly.

Simplified, on purpose (each module's docstring has the details):

- Time is compressed: probes every 0.2 s, restart and image-pull back-offs from 0.5 s
  (real: ``periodSeconds``, 10 s); grace periods on deletion are real seconds.
- Pods share the host's network namespace (each its own 127.x.y.z; ``0.0.0.0`` spelled
  in a container's command/args/env becomes the pod IP); volumes are directories that
  a container reaches by path rewriting of its command, args, env and workingDir.
- Services are stored, not proxied (no clusterIP, no DNS); a pod's service-account
  token is checked against Roles only (:mod:`.rbac`); memory limits are not enforced
  (``oom_kill`` scripts an OOM); rollouts
  surge 100%; no ProgressDeadlineExceeded, preemption, exec or attach (a startupProbe
  holds the other probes back until it passes, as the kubelet does);
  Knative never scales to zero (a revision's probes without a port get the container's,
  as Knative's webhook gives them); RayCluster pods run their commands as given.
- Validation covers names, namespaces and workloads' selector/containers; schemas are
  checked elsewhere (``kubernetes-validate`` and the CRD schemas in the manifest tests).

Use::

    with K8sDouble() as cluster:
        api = kubernetes.client.AppsV1Api(cluster.api_client())
        ...

or the ``k8s_cluster`` fixture (:mod:`tests.k8s_double.fixtures`).
"""

from .cluster import K8sDouble, PodProcess
from .containers import Image, Images
from .faults import Rule
from .server import Recorded
from .store import ApiError

__all__ = ["ApiError", "Image", "Images", "K8sDouble", "PodProcess", "Recorded", "Rule"]
