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
- ``bootstrap``: how this client's runtime gets into any image at start, without a build.
- ``backend``: apply, readiness watch, failure classification, port-forward, teardown.
"""
