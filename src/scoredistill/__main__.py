"""``python -m scoredistill`` (and ``torchrun -m scoredistill``) runs the CLI."""

from .cli import main

raise SystemExit(main())
