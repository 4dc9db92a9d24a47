"""``python -m eightys`` is the same as the ``eightys`` command."""

from eightys.cli import main

raise SystemExit(main())
