"""The core: what a compute is (``Compute``, ``Image``, resources) and how to reach it."""
