"""The ``bcd-node`` command line, a composition root (with :mod:`bcd_node.node`).

:mod:`~bcd_node.cli.commands` builds the parser, holds the node's own commands and
:func:`main` (the console script ``bcd-node = bcd_node.cli:main``; ``python -m bcd_node.cli``
runs it too, which is how ``serve`` starts its child processes);
:mod:`~bcd_node.cli.dicom_commands` adds ``bcd-node import``, and
:mod:`~bcd_node.cli.model_commands` the model's (``synth``, ``train``, ``evaluate``,
``analyze``). The module is named ``commands``, not
``main``, so that the :func:`main` exported here does not hide a submodule of the same name. It
sits on top of the flow and may call every package of :mod:`bcd_node`, never :mod:`webadmin`
(``serve`` starts the console through :mod:`bcd_node.node.serve`).
"""

from bcd_node.cli.commands import main

__all__ = ["main"]
