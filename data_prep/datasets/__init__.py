"""The TFDS builders of the datasets; importing this registers them with TFDS by name.

    import data_prep.datasets, tensorflow_datasets as tfds
    ds = tfds.load("ixi/t1", data_dir="data", split="train[:10%]",
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                       manual_dir="~/Downloads/IXI")})

Each builder lives in its own folder (`<name>/<name>_dataset_builder.py`), as `tfds build` expects:
`tfds build data_prep/datasets/ixi --manual_dir=... --data_dir=...`.
"""

from data_prep.datasets.fastmri.fastmri_dataset_builder import Builder as Fastmri  # noqa: F401
from data_prep.datasets.ixi.ixi_dataset_builder import Builder as Ixi  # noqa: F401
from data_prep.datasets.sample.sample_dataset_builder import Builder as Sample  # noqa: F401

BUILDERS = {"ixi": Ixi, "fastmri": Fastmri, "sample": Sample}
