"""The offline emulator of the Azure DICOM service, split by the part of the service it plays."""
