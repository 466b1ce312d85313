"""Delivery, the last stage of the flow: results go from the outbox to each PACS.

:mod:`~bcd_node.delivery.outbox` sends the outbox rows that the analysis committed: C-STORE SCU
per destination, each claimed row lease-fenced, exponential backoff, a dead letter after
``delivery.max_attempts`` and an audited manual retry; it also checks each destination with a
periodic C-ECHO and sums up the outbox for the status pages; :mod:`~bcd_node.delivery.status`
gathers the node's status (queue, failed jobs, deliveries, disk) for the console, the API and
``bcd-node status`` alike. It may call :mod:`bcd_node.jobs`
(:mod:`~bcd_node.jobs.leases` keeps a row's lease while it is sent), :mod:`bcd_node.records`,
:mod:`bcd_node.store`, :mod:`bcd_node.db`, the shared top-level modules and the :mod:`dicom`
library; it never calls :mod:`bcd_node.intake` or :mod:`bcd_node.analysis`.
"""
