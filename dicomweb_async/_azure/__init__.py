"""The Azure Health Data Services DICOM service's own APIs and its client.

Azure AD tokens, the change feed, long-running operations, extended query tags, bulk
update, export and partitions, and :class:`AzureDICOMwebClient`, which adds them to the
standard client. A new Azure API goes here as a module of its own, with its methods on
``AzureDICOMwebClient``; nothing below this layer imports it.
"""
