"""Jobs, the second stage of the flow: the durable queue of work and the threads that drain it.

:mod:`~bcd_node.jobs.queue` claims a job with a lease (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), completes, fails and retries it, every update fenced by the lease's owner, and
counts the jobs per kind and state;
:mod:`~bcd_node.jobs.leases` keeps a claimed row's lease while its work runs (a job here, an
outbox row in :mod:`bcd_node.delivery`); :mod:`~bcd_node.jobs.workers` runs the threads that
claim jobs and hand each to the function they were given. That function is the analysis
pipeline, passed in by the worker role (:mod:`bcd_node.node.roles`), so jobs never imports
:mod:`bcd_node.analysis`. :mod:`~bcd_node.jobs.retention` is the worker role's hourly purge of
what ``[retention]`` no longer keeps. Jobs may call :mod:`bcd_node.store`,
:mod:`bcd_node.records`, :mod:`bcd_node.db` and the shared top-level modules. Later stages may
use it (analysis completes its job through the queue, delivery keeps its leases with it); it
never calls them.
"""
