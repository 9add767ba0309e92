"""Remote calls: ``kt.fn`` and ``kt.cls``, what they pickle, and version checks."""
