"""The real-data comparison: every arm against vanilla nnU-Net, Skeleton Recall and Wide on DRIVE, STARE and
vesselNN, published as docs/results.md.

``store``: ``collect`` copies a harness results folder's records into ``records/<suite name>/`` (the repository's
store); ``case``: the case image of each data set; ``sections``: the generated part of the page from the store
(``render``); ``page``: the command, ``python -m nnunet_tubeconv.benchmarks.studies.real_data.page collect|render``.
"""
