"""The DICOMweb services, one module each: QIDO-RS, WADO-RS, STOW-RS and DELETE.

Each function takes a :class:`~dicomweb_async._transport.transport.Transport` and returns
typed results; ``download`` writes retrieved parts to disk. A new standard DICOMweb service
(for example UPS-RS) goes here as a module of its own, with its methods on the client.
"""
