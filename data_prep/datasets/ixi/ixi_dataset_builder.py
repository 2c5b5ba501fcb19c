"""IXI brain MRI (T1, T2, PD) as a TFDS dataset of 2D HR slices.

    tfds build data_prep/datasets/ixi --manual_dir=~/Downloads/IXI --data_dir=data [--config=t1]
    python -m data_prep --dataset=ixi[/t1] --manual_dir=~/Downloads/IXI --data_dir=data
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from data_prep import ixi
from data_prep.builder import VolumeBuilder

_CONTRASTS = {"all": ("T1", "T2", "PD"), "t1": ("T1",), "t2": ("T2",), "pd": ("PD",)}


class Builder(VolumeBuilder):
  """IXI: split by subject (500 / 70 / 6 train / test / val volumes per contrast when available)."""

  DATASET = ixi.NAME
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="all", description="T1, T2 and PD volumes (a subject's contrasts in one split)"),
      tfds.core.BuilderConfig(name="t1", description="T1-weighted volumes only"),
      tfds.core.BuilderConfig(name="t2", description="T2-weighted volumes only"),
      tfds.core.BuilderConfig(name="pd", description="proton-density volumes only"),
  ]
  DEFAULT_CONFIG_NAME = "all"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download IXI-T1.tar, IXI-T2.tar and IXI-PD.tar (any of them) from
https://brain-development.org/ixi-dataset/ into one folder and pass it as --manual_dir. The archives
are read as they are (one member in memory at a time); extracted IXI*-T1/T2/PD.nii.gz files anywhere
below the folder work too. Other IXI files (MRA, DTI) are ignored.
"""
  HOMEPAGE = "https://brain-development.org/ixi-dataset/"
  DESCRIPTION = """\
IXI: about 600 MR brain scans of normal, healthy subjects from three London hospitals (Philips 1.5 T
and 3 T, GE 1.5 T), here as 2D slices for super-resolution. Each volume is sliced along its
acquisition slice axis (the thickest voxel axis, else the header's slice dimension), normalised by
its 99.5th percentile (`intensity_scale`), centre 240x240 in-plane (zero padded where smaller), the
centre 96 slices, near-empty slices dropped. Split by subject, deterministic for a seed: 500 / 70 / 6
train / test / val volumes per contrast when that many subjects exist, proportional otherwise; a
subject is in one split for all its contrasts and in every config. IXI data: CC BY-SA 3.0.
"""
  CITATION = """\
@misc{ixi,
  title = {{IXI} -- Information eXtraction from Images},
  note = {EPSRC GR/S21533/02, https://brain-development.org/ixi-dataset/, CC BY-SA 3.0},
}
@inproceedings{mahapatra2022improved,
  title = {Improved Super Resolution of {MR} Images Using {CNNs} and Vision Transformers},
  author = {Mahapatra, Dwarikanath and Ge, Zongyuan},
  booktitle = {Medical Imaging with Deep Learning (MIDL)},
  year = {2022},
}
"""

  def _slice_hw(self):
    return tuple(ixi.TARGET_HW)

  def _find_sources(self, manual_dir):
    if manual_dir is None:
      raise ValueError(f"ixi needs the manual download (--manual_dir):\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return ixi.build(manual_dir, seed=self.seed, contrasts=_CONTRASTS[self.builder_config.name])
