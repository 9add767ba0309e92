"""The Kubernetes backend: the same pod runtime in a container of any image with Python.

Where things are:

- :mod:`.identity`: the labels and annotations that say which compute (and user) an
  object belongs to; everything ``.to()`` creates carries them, and ``kt list`` /
  ``kt teardown`` find objects by them and by nothing else.
- :mod:`.container`: what the runtime bootstrap hands the manifest renderer (the
  container's command, env, volumes and the objects it needs applied first).
- :mod:`.options`: the cluster fields of a compute (``kt.Compute(gpu_type=...,
  tolerations=..., volumes=...)``), checked, kept in ``ComputeSpec.kubernetes``.
- :mod:`.pods`: the pod's main container and pod spec (resources, probes, volumes, GPUs).
- :mod:`.manifests`: the objects a compute becomes (Deployment + Service, Knative Service,
  RayCluster, StatefulSet, CronJob), as pure dicts.
- :mod:`.bootstrap`: how this client's runtime gets into any image at start, no build.
- :mod:`.backend`: the :class:`~.backend.KubernetesBackend` (up, get, list, down,
  status, endpoint, logs), over:

  - :mod:`.client`: the ``kubernetes`` package and a kubeconfig, loaded lazily;
  - :mod:`.apply`: server-side apply, get, list and delete by REST path;
  - :mod:`.podstatus`: what a pod object says (phase, reason), pure;
  - :mod:`.readiness`: the watch until ready, and the errors failures become;
  - :mod:`.portforward`: the dial function through the API server.
"""
