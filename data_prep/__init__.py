"""Offline conversion of MR datasets (IXI, fastMRI knee, the bundled sample) to TFRecord slice shards.

    python -m data_prep --dataset={ixi,fastmri,sample} --manual_dir=DIR --data_dir=DIR

writes `<data_dir>/<dataset>/` in the schema of `mrsr_jax.data.records`, which
`mrsr_jax.data.pipeline` reads. Modules: `volumes` (loading, slice axis, normalisation, cropping),
`writer` (atomic, resumable shard writing), one module per dataset, `__main__` (the CLI).
"""

DATASETS = ("ixi", "fastmri", "sample")
