"""The bundled sample (six IXI T1 subjects + package MR volumes) as a TFDS dataset; no download.

    tfds build data_prep/datasets/sample --data_dir=data
    python -m data_prep --dataset=sample --data_dir=data [--manual_dir=more/IXI/files]
"""

from __future__ import annotations

from data_prep import sample
from data_prep.builder import VolumeBuilder


class Builder(VolumeBuilder):
  """Six real IXI T1 subjects (4 train, 1 val IXI015, 1 test IXI014) + nilearn / dipy / nibabel volumes (train)."""

  DATASET = sample.NAME
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Nothing to download: the six IXI T1 volumes ship with data_prep (data_prep/sample_data/ixi_t1_2mm)
and the other volumes with nilearn, dipy and nibabel. Optionally, --manual_dir names a folder of more
IXI*-T1/T2/PD.nii.gz files to add to the subject split.
"""
  HOMEPAGE = "https://brain-development.org/ixi-dataset/"
  DESCRIPTION = """\
A small real-MR dataset for the demo and the tests: six IXI T1 volumes at 2 mm (the centre 64
sagittal slices each; split by subject: IXI012/013/033/034 train, IXI015 val, IXI014 test), plus,
for training only, the nilearn MNI152 2009a T1 template (2 mm, centre 48 axial slices), nibabel's
anatomical.nii, dipy's S0_10slices b0 volume and dipy's T1 coronal slice. 128x128 slices normalised
per volume by the 99.5th percentile. IXI data: CC BY-SA 3.0.
"""
  CITATION = """\
@misc{ixi,
  title = {{IXI} -- Information eXtraction from Images},
  note = {EPSRC GR/S21533/02, https://brain-development.org/ixi-dataset/, CC BY-SA 3.0},
}
"""

  def _slice_hw(self):
    return tuple(sample.TARGET_HW)

  def _find_sources(self, manual_dir):
    return sample.build(manual_dir, seed=self.seed)
