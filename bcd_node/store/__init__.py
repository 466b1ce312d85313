"""The data folder: where every file the node keeps lives, how it is written, and when it goes.

:mod:`~bcd_node.store.layout` names every path under ``storage.data_dir`` (and only it does),
:mod:`~bcd_node.store.storage` writes files durably (temporary name, fsync, rename) and watches
the free disk, :mod:`~bcd_node.store.secrets` generates the node's secrets on first start. What
``[retention]`` no longer keeps is purged by :mod:`bcd_node.jobs.retention`, which removes rows
and files together. The store sits below everything else of the node (settings name the
database file through its layout): it may call only :mod:`bcd_node.errors`.
"""
