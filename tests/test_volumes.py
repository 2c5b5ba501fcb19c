"""Volume reading shared by predict and data_prep (mrsr_jax.data.volumes / .fastmri): one rule, both tools.

Real MR data: nibabel's anatomical.nii (33 x 41 x 25, 2 mm, int16), written as NIfTI and fastMRI .h5."""

import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from data_prep import fastmri as prep_fastmri
from data_prep import volumes as prep_volumes
from mrsr_jax import predict
from mrsr_jax.data import fastmri, volumes

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def _anatomical() -> np.ndarray:
  return np.asarray(nib.load(ANATOMICAL).dataobj, np.float32)


def _header(enc_matrix, enc_fov, rec_matrix, rec_fov) -> bytes:
  def space(tag, m, f):
    return (f"<{tag}><matrixSize><x>{m[0]}</x><y>{m[1]}</y><z>{m[2]}</z></matrixSize>"
            f"<fieldOfView_mm><x>{f[0]}</x><y>{f[1]}</y><z>{f[2]}</z></fieldOfView_mm></{tag}>")
  return ('<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
          + space("encodedSpace", enc_matrix, enc_fov) + space("reconSpace", rec_matrix, rec_fov)
          + "</encoding></ismrmrdHeader>").encode()


def _h5(path, header=None, **datasets) -> str:
  with h5py.File(path, "w") as f:
    f.attrs["acquisition"] = "CORPD_FBK"
    for k, v in datasets.items():
      if v is None:
        f.create_group(k)
      else:
        f.create_dataset(k, data=v)
    if header is not None:
      f.create_dataset("ismrmrd_header", data=np.bytes_(header))
  return str(path)


@pytest.mark.parametrize("key", ["reconstruction_esc", "kspace"])
def test_data_prep_and_predict_give_a_fastmri_file_the_same_voxel_size(tmp_path, key):
  """x is the row (fastMRI arrays are [slices, x, y]); a reconstruction lies on reconSpace, the inverse
  FFT of k-space on encodedSpace. Old data_prep: (y, x) of reconSpace for both, (0.75, 0.5) here."""
  image = np.moveaxis(np.clip(_anatomical()[:32, :40, :6], 0, None), 2, 0)  # [6, x=32, y=40]
  # encodedSpace 32 x 40 over 16 x 30 mm; reconSpace (for the stored reconstruction) the same grid.
  hdr = _header((32, 40, 1), (16, 30, 3), (32, 40, 1), (16, 30, 3))
  data = image if key != "kspace" else fastmri.image_to_kspace(image).astype(np.complex64)
  path = _h5(tmp_path / "file1000001.h5", hdr, **{key: data})
  _, _, prep_spacing, used = prep_fastmri.read_image(path)
  _, _, header = predict.load_input(path)
  assert used == key
  np.testing.assert_allclose(prep_spacing, (0.5, 0.75, 3.0), rtol=1e-6)
  np.testing.assert_allclose(header.get_zooms(), prep_spacing, rtol=1e-6)


def test_a_group_where_the_image_should_be_is_named_not_called_corrupt(tmp_path):
  """Old data_prep: "cannot read the file's structure, corrupt (AttributeError ...)"."""
  path = _h5(tmp_path / "file1000002.h5", reconstruction_esc=None)
  with pytest.raises(volumes.BadInputError,
                     match=r"'reconstruction_esc' must be a real \[slices, H, W\] dataset, got Group"):
    prep_fastmri.check_file(path)


def test_complex_nifti_is_refused_by_data_prep_as_by_predict(tmp_path):
  """Old data_prep cast complex voxels to float32: the imaginary part silently dropped."""
  data = _anatomical()
  path = str(tmp_path / "IXI900-HH-0001-T1.nii.gz")
  nib.save(nib.Nifti1Image((data + 1j * data).astype(np.complex64), np.diag([2.0, 2.0, 2.0, 1.0])), path)
  for load in (lambda: prep_volumes.load_volume(path, path, dataset="ixi", contrast="T1", subject="IXI900",
                                               target_hw=(32, 32), max_slices=None),
               lambda: predict.load_input(path)):
    with pytest.raises(volumes.BadInputError, match="unsupported voxel type complex64"):
      load()


def test_nifti_from_bytes_and_path_agree_and_a_single_frame_4d_is_3d(tmp_path):
  """One reader for a path (predict, extracted IXI) and for bytes (a member of an IXI tar)."""
  data = _anatomical()
  path = tmp_path / "a.nii.gz"
  nib.save(nib.Nifti1Image(data[..., None].astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
  from_path, affine, _ = volumes.load_nifti(str(path))
  from_bytes, affine_b, _ = volumes.load_nifti(path.read_bytes(), "IXI-T1.tar:a.nii.gz")
  np.testing.assert_array_equal(from_path, data)
  np.testing.assert_array_equal(from_bytes, data)
  np.testing.assert_array_equal(affine, affine_b)
  two = tmp_path / "two.nii"
  nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), str(two))
  with pytest.raises(volumes.BadInputError, match=r"wrong number of dimensions: expected a 3D volume, got"):
    volumes.load_nifti(str(two))
  np.testing.assert_array_equal(volumes.load_nifti(str(two), frames=True, frame=1)[0], data)
