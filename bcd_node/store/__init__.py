"""The data folder: where every file the node keeps lives, how it is written, and when it goes.

:mod:`~bcd_node.store.layout` names every path under ``storage.data_dir`` (and only it does),
:mod:`~bcd_node.store.storage` writes files durably (temporary name, fsync, rename) and watches
the free disk, :mod:`~bcd_node.store.secrets` generates the node's secrets on first start, and
:mod:`~bcd_node.store.retention` purges what ``[retention]`` no longer keeps. It is shared below
the stages of the flow (intake, jobs, analysis, delivery all write or read files through it), so
it never calls a stage: it may call :mod:`bcd_node.db`, :mod:`bcd_node.records` (retention audits
its purges), :mod:`bcd_node.settings`, :mod:`bcd_node.errors` and the process context
:mod:`bcd_node.runtime`.
"""
