"""The running node, a composition root (with :mod:`bcd_node.cli`): processes, roles and what an
administrator sees of them.

:mod:`~bcd_node.node.serve` composes the roles (DICOM listener with its intake, workers with the
scheduler, console) into processes, from the starters in :mod:`~bcd_node.node.roles`,
:mod:`~bcd_node.node.listeners` and :mod:`~bcd_node.node.scheduler`;
:mod:`~bcd_node.node.processes` starts and supervises the child processes and
:mod:`~bcd_node.node.systemd` tells systemd when the node is ready; :mod:`~bcd_node.node.wake`
carries wake-ups between those processes; :mod:`~bcd_node.node.metrics`,
:mod:`~bcd_node.node.health` and :mod:`~bcd_node.node.logs` are what an administrator sees of
them (Prometheus ``/metrics``, ``/readyz``, the log); :mod:`~bcd_node.node.memory_budget` shares
memory between the console's concurrent uploads and previews. It sits on top of the flow and
may call every stage (:mod:`bcd_node.intake`, :mod:`bcd_node.jobs`, :mod:`bcd_node.analysis`,
:mod:`bcd_node.delivery`) and every shared package; ``serve`` alone may start the console
(:mod:`webadmin`). Nothing below it imports it: the stages share the process's context through
:mod:`bcd_node.runtime`, not through this package.
"""
