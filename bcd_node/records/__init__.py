"""What the node records about people, their acts and the state of a case, in the database.

:mod:`~bcd_node.records.audit` keeps the hash-chained audit log, :mod:`~bcd_node.records.users`
the console users and API tokens, :mod:`~bcd_node.records.throttle` the failed sign-ins,
:mod:`~bcd_node.records.cases` what a case (a study under review) is: its status, confidence,
blast count and flags, defined once, :mod:`~bcd_node.records.studies` the worklist columns of a
study, :mod:`~bcd_node.records.verification` a doctor's verification of a result and the
signature of a case (for the console and any other client), :mod:`~bcd_node.records.names`
people's names as DICOM writes them, and :mod:`~bcd_node.records.revisions` what a changed
version of an image does to its earlier results. It is shared below the stages of the flow:
intake, analysis, delivery, the console and the CLI record through it, so it never calls a
stage; it may call only :mod:`bcd_node.db`, the shared top-level modules
(:mod:`bcd_node.settings`, :mod:`bcd_node.errors`) and the :mod:`dicom` library (revisions
derives the SR series UID of a superseded result with it).
"""
