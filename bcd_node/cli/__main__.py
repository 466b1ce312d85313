"""``python -m bcd_node.cli`` runs the ``bcd-node`` command (``serve`` starts its children so)."""

import sys

from bcd_node.cli import main

if __name__ == "__main__":  # pragma: no cover - run as a program
    sys.exit(main())
