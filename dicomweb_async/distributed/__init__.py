"""Sharding one migration over many processes or machines.

The engine-neutral core: plan shards on the driver (:func:`plan_uploads`,
:func:`plan_downloads`), run each anywhere with :func:`run_shard` (blocking, picklable
input and output) and :func:`merge_reports` what comes back. Any engine that can call a
Python function on a worker can run the shards: Dask, Ray, Spark, a process pool.
:func:`store_folders` and :func:`download_studies` do all of it on a Dask cluster (the
``dask`` extra), :func:`store_folders_on_ray` and :func:`download_studies_on_ray` on a Ray
cluster (the ``ray`` extra).

Delivery is at least once (engines re-run the tasks of workers that died); the effect is
exactly once, because STOW-RS is keyed by SOPInstanceUID and per-attempt journals bound
what is sent again to what was in flight.
"""

from __future__ import annotations

from .. import _present_as_public
from .._distributed.merge import merge_reports
from .._distributed.on_dask import download_studies, local_cluster, store_folders
from .._distributed.on_ray import download_studies_on_ray, local_ray, store_folders_on_ray
from .._distributed.plan import find_studies, plan_downloads, plan_uploads
from .._distributed.run import ShardReport, run_shard
from .._distributed.spec import ShardSpec, Target

__all__ = [
    "ShardReport",
    "ShardSpec",
    "Target",
    "download_studies",
    "download_studies_on_ray",
    "find_studies",
    "local_cluster",
    "local_ray",
    "merge_reports",
    "plan_downloads",
    "plan_uploads",
    "run_shard",
    "store_folders",
    "store_folders_on_ray",
]

_present_as_public(globals(), __name__)
