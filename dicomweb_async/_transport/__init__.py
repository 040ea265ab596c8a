"""HTTP transport: the client's connection pools, request bodies, auth and response streams.

This layer owns everything that touches httpx and httpcore below the public client: the
network backend with large reads, the sharded pool, replayable request bodies, bearer-token
auth, retries around each request, and the pump from a response into the multipart reader.
httpx errors become the package's own exceptions here and nowhere else. Above it only the
public client facade (whose signatures accept ``httpx.Timeout``, ``httpx.Auth`` and
``httpx.AsyncClient``) and the test helpers import httpx.
"""
