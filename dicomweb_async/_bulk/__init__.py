"""Bulk transfer: many instances or studies at once, under a bound, resumable.

Folder scanning, upload and download pipelines, the journal that makes uploads resumable,
progress events and the reports that account for every input exactly once. Built on the
services below it; knows nothing of the command line or of Azure's own APIs.
"""
