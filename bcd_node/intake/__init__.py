"""Intake, the first stage of the flow: an image becomes durable before it is acknowledged.

:mod:`~bcd_node.intake.handlers` holds the DICOM event handlers (C-STORE, refused associations),
the only place where DIMSE status codes and Error Comments are chosen;
:mod:`~bcd_node.intake.intake` (the facade, ``Intake.accept``) makes an image durable before it
is acknowledged, for the DICOM listener and the console's uploads alike: it validates it
(:mod:`~bcd_node.intake.validate`, which also holds the refusals), writes its file durably and
hands it to the committer thread (:mod:`~bcd_node.intake.commit`), which commits the rows and
queued analysis job of every pending image in one transaction (group commit) through
:mod:`~bcd_node.intake.rows` (the SQL); :mod:`~bcd_node.intake.upload` turns an uploaded
PNG/JPEG into a DICOM image for it. It may call
:mod:`bcd_node.records`, :mod:`bcd_node.store`, :mod:`bcd_node.db`, the shared top-level modules
and the :mod:`dicom` library. It hands work on only through the job rows it commits: it never
calls :mod:`bcd_node.jobs`, :mod:`bcd_node.analysis` or :mod:`bcd_node.delivery`.
"""
