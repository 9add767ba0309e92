# kt-bootstrap: the container's entry point (POSIX sh; the runtime ConfigMap mounts it).
#
# Finds a Python >= 3.11 in the image and execs kt_start.py (next to this file) with it;
# kt_start.py installs this client's pod runtime, runs the Image's steps and execs
# `python -m pod_runtime`. Errors go to stderr with the "kt-bootstrap: error:" prefix, so
# the last lines of `kubectl logs` (and a CrashLoopBackOff's message) say what is wrong.
# KT_IMAGE_PYTHON names the interpreter when the image has several.

dir="${KT_RUNTIME_DIR:-/opt/kt/runtime}"
if [ ! -r "$dir/kt_start.py" ]; then
    echo "kt-bootstrap: error: $dir/kt_start.py is missing: the runtime ConfigMap is not mounted at KT_RUNTIME_DIR ($dir)" >&2
    exit 2
fi

check='import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(0 if sys.version_info >= (3, 11) else 1)'
if [ -n "${KT_IMAGE_PYTHON:-}" ]; then
    candidates="$KT_IMAGE_PYTHON"
else
    candidates="python3 python python3.14 python3.13 python3.12 python3.11"
fi
found=""
for name in $candidates; do
    py=$(command -v "$name" 2>/dev/null) || continue
    version=""
    if version=$("$py" -c "$check" 2>/dev/null); then
        echo "kt-bootstrap: python $py ($version)"
        exec "$py" "$dir/kt_start.py"
    fi
    found="$found $py (${version:-not runnable})"
done
if [ -n "$found" ]; then
    echo "kt-bootstrap: error: the pod runtime needs Python >= 3.11; this image has only:$found. Use an image with Python 3.11 or newer (or set KT_IMAGE_PYTHON)" >&2
else
    echo "kt-bootstrap: error: no Python in this image (looked for: $candidates on PATH=$PATH). Use an image with Python 3.11 or newer (or set KT_IMAGE_PYTHON)" >&2
fi
exit 2
