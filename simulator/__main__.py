"""``python -m simulator``."""

from .cli import main

raise SystemExit(main())
