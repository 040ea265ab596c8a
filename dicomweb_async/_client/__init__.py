"""The public client facade, :class:`AsyncDICOMwebClient`, over the standard services.

The methods keep dicomweb-client's names and parameters, grouped by service in modules of
their own and put together in ``client``.
"""
