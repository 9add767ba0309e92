"""``python -m kubetorch_jupyter.cli``."""

from .main import main

raise SystemExit(main())
