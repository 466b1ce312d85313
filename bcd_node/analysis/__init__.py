"""Analysis, the third stage of the flow: what a claimed job does, and publishing its results.

:mod:`~bcd_node.analysis.pipeline` runs a claimed job and hands it by kind to
:mod:`~bcd_node.analysis.image` (one received image), :mod:`~bcd_node.analysis.verified` (a
doctor's verified report) or :mod:`~bcd_node.analysis.summary` (a quiet study's summary).
:mod:`~bcd_node.analysis.findings` decodes pixels, predicts (:mod:`bcd_node.inference`) and
builds the PDF report (:mod:`bcd_node.report`) and the SEG + SR + Encapsulated PDF
(:mod:`dicom`) without database or files; :mod:`~bcd_node.analysis.publish` writes the files,
then stores the result rows and one outbox row per output and destination, in one transaction
with the job's completion. :mod:`~bcd_node.analysis.previews` renders the pixels the pipeline
analyses as the PNG the console shows; it sits here rather than in :mod:`bcd_node.store`
because it decodes images with the pipeline, which the store must not call. Analysis may call
:mod:`bcd_node.jobs` (to complete the job it was given), :mod:`bcd_node.inference`,
:mod:`bcd_node.report`, :mod:`bcd_node.records`, :mod:`bcd_node.store`, :mod:`bcd_node.db`,
the shared top-level modules and :mod:`dicom`; it hands results to delivery only through outbox
rows, never by calling :mod:`bcd_node.delivery`.
"""
