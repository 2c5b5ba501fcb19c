"""fastMRI knee (PD, FS-PD) as a TFDS dataset of 2D HR slices.

    tfds build data_prep/datasets/fastmri --manual_dir=~/fastmri/knee --data_dir=data [--config=pd]
    python -m data_prep --dataset=fastmri[/pd] --manual_dir=~/fastmri/knee --data_dir=data
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from data_prep import fastmri
from data_prep.builder import VolumeBuilder

_CONTRASTS = {"both": ("PD", "FSPD"), "pd": ("PD",), "fspd": ("FSPD",)}


class Builder(VolumeBuilder):
  """fastMRI knee: fastMRI's train files -> train (+ a few as val), its val files -> test."""

  DATASET = fastmri.NAME
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="both", description="PD (CORPD_FBK) and FS-PD (CORPDFS_FBK) volumes"),
      tfds.core.BuilderConfig(name="pd", description="coronal proton density (CORPD_FBK) only"),
      tfds.core.BuilderConfig(name="fspd", description="coronal fat-saturated proton density (CORPDFS_FBK) only"),
  ]
  DEFAULT_CONFIG_NAME = "both"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request the fastMRI knee data at https://fastmri.med.nyu.edu/ (data-sharing agreement), download
knee_singlecoil_train / knee_singlecoil_val (and/or the multicoil ones), extract them, and pass the
folder holding the *train* and *val* folders as --manual_dir. Without such folders the .h5 files
below it are split by file.
"""
  HOMEPAGE = "https://fastmri.med.nyu.edu/"
  DESCRIPTION = """\
fastMRI knee as 2D HR slices for super-resolution: per .h5 file the stored reconstruction
(`reconstruction_esc`, else `reconstruction_rss`), else the RSS of the centred inverse FFT of
`kspace`, centre 320x320, normalised by its 99.5th percentile (`intensity_scale`), near-empty slices
dropped; spacing from the ISMRMRD header. fastMRI's train files are the train split (a few carved
off deterministically as val), its val files the test split. `orientation` is "" (no affine in .h5).
NYU fastMRI data, under its data-sharing agreement.
"""
  CITATION = """\
@article{zbontar2018fastmri,
  title = {{fastMRI}: An Open Dataset and Benchmarks for Accelerated {MRI}},
  author = {Zbontar, Jure and Knoll, Florian and Sriram, Anuroop and others},
  journal = {arXiv preprint arXiv:1811.08839},
  year = {2018},
}
"""

  def _slice_hw(self):
    return tuple(fastmri.TARGET_HW)

  def _find_sources(self, manual_dir):
    if manual_dir is None:
      raise ValueError(f"fastmri needs the manual download (--manual_dir):\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return fastmri.build(manual_dir, seed=self.seed, contrasts=_CONTRASTS[self.builder_config.name])
