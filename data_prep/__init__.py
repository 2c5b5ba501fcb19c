"""Offline conversion of MR datasets (IXI, fastMRI knee, the bundled sample) to TFDS datasets of HR slices.

    python -m data_prep --dataset={ixi,fastmri,sample}[/<config>] --manual_dir=DIR --data_dir=DIR
    tfds build data_prep/datasets/<name> --manual_dir=DIR --data_dir=DIR

writes `<data_dir>/<dataset>/<config>/<version>/` in the schema of `mrsr_jax.data.records`, which
`mrsr_jax.data.pipeline` reads (without importing this package). Modules: `volumes` (cropping, empty
slices, resampling on top of `mrsr_jax.data.volumes`), one module per dataset (finding, checking and
splitting its files), `builder` (the TFDS builder they share), `datasets/` (the TFDS builders),
`writer` (what a dataset hands the builder; the atomic swap of a rebuilt set), `__main__` (the CLI).
"""

DATASETS = ("ixi", "fastmri", "sample")
