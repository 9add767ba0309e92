"""``python -m kubetorch_jupyter.backends.kubernetes.bootstrap``: the runtime ConfigMap.

Prints what this client would apply (its name, size and hashes), or with ``--manifest``
the ConfigMap itself as JSON, for ``kubectl apply -f -`` by someone who applies objects
for users (a platform team pre-seeding a namespace)::

    python -m kubetorch_jupyter.backends.kubernetes.bootstrap --manifest --username alice \
        --namespace ml | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import json
import sys

from ....exceptions import KtError
from . import CONFIGMAP_LIMIT, runtime_bundle, runtime_configmap, runtime_configmap_name


def main(argv: list[str] | None = None) -> int:
    """Print the runtime bundle's figures, or its ConfigMap with ``--manifest``."""
    parser = argparse.ArgumentParser(prog="python -m kubetorch_jupyter.backends.kubernetes."
                                          "bootstrap", description=__doc__.split("\n")[0])
    parser.add_argument("--username", default="user", help="whose ConfigMap (KT_USERNAME)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--manifest", action="store_true", help="print the ConfigMap as JSON")
    args = parser.parse_args(argv)
    try:
        bundle = runtime_bundle()
        name = runtime_configmap_name(args.username, bundle)
    except KtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.manifest:
        manifest = runtime_configmap(username=args.username, namespace=args.namespace)
        print(json.dumps(manifest, indent=1))
        return 0
    print(f"configmap     {name}")
    print(f"runtime       pod_runtime {bundle.version} "
          + " ".join(f"{k} {v}" for k, v in sorted(bundle.deps.items())))
    print(f"zip           {len(bundle.zip)} bytes")
    print(f"data          {bundle.size} bytes ({bundle.size / CONFIGMAP_LIMIT:.0%} "
          f"of the 1 MiB limit)")
    print(f"hash          {bundle.hash}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
