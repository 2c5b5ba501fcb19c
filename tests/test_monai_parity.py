"""Our UNETR / ViT with converted weights against MONAI's own (torch, CPU) on a real MR volume.

MONAI and torch are reference-only extras: the whole file skips without them. The volume is the MNI152
T1 template shipped inside nilearn (real MR, no download), centre-cropped and block-averaged to the
test size and scaled to [0, 1].
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai_nets = pytest.importorskip("monai.networks.nets")

from mrsr_jax.models import UNETR, ViT, convert_unetr_state_dict, convert_vit_state_dict  # noqa: E402
from mrsr_jax.models import monai_import  # noqa: E402

TOL = 1e-4


def _mni_volume() -> np.ndarray:
  spec = importlib.util.find_spec("nilearn")
  if spec is None:
    pytest.skip("nilearn (which ships the MNI152 T1 template) is not installed")
  nib = pytest.importorskip("nibabel")
  path = os.path.join(os.path.dirname(spec.origin), "datasets", "data",
                      "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
  if not os.path.exists(path):
    pytest.skip(f"MNI152 template not found at {path}")
  v = nib.load(path).get_fdata(dtype=np.float32)
  return v / v.max()


def _block_mean(a: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
  """Centre crop to the largest multiple of `size`, then average blocks down to `size`."""
  f = min(s // t for s, t in zip(a.shape, size))
  crop = tuple(t * f for t in size)
  start = tuple((s - c) // 2 for s, c in zip(a.shape, crop))
  a = a[tuple(slice(b, b + c) for b, c in zip(start, crop))]
  shape = sum(((t, f) for t in size), ())
  return a.reshape(shape).mean(axis=tuple(range(1, 2 * len(size), 2)))


def _mr_input(img_size: tuple[int, ...], batch: int = 1) -> np.ndarray:
  """`[B, 1, *img_size]` (torch layout) real MR: a volume, or axial slices for 2D."""
  vol = _mni_volume()
  if len(img_size) == 3:
    x = _block_mean(vol, img_size)[None]
    x = np.concatenate([x, x[:, ::-1]], 0)[:batch]  # second sample: mirrored, so the batch differs
  else:
    mid = vol.shape[2] // 2
    x = np.stack([_block_mean(vol[:, :, mid + 10 * i], img_size) for i in range(batch)])
  return np.ascontiguousarray(x[:, None], dtype=np.float32)


def _randomised(module: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
  """Eval mode, every parameter perturbed (LayerNorm 1/0 and zero biases would hide mapping errors)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  return module.eval()


def _to_channels_last(t: np.ndarray) -> np.ndarray:
  return np.moveaxis(t, 1, -1)


def _check_unetr(img_size, hidden_size, mlp_dim, num_heads, feature_size, out_channels=3, batch=2):
  nd = len(img_size)
  ref = _randomised(monai_nets.UNETR(
      in_channels=1, out_channels=out_channels, img_size=img_size, feature_size=feature_size,
      hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, spatial_dims=nd))
  x = _mr_input(img_size, batch)
  with torch.no_grad():
    xt = torch.from_numpy(x)
    ref_logits = ref(xt).numpy()
    ref_out, ref_hidden = ref.vit(xt)
  model = UNETR(img_size, out_channels=out_channels, feature_size=feature_size, hidden_size=hidden_size,
                mlp_dim=mlp_dim, num_heads=num_heads)
  params = convert_unetr_state_dict(ref.state_dict())
  xl = jnp.asarray(_to_channels_last(x))
  vit = ViT(img_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads)
  with jax.default_matmul_precision("highest"):
    logits = model.apply({"params": params}, xl)
    out, hidden = vit.apply({"params": params["vit"]}, xl)
  assert len(hidden) == len(ref_hidden) == 12
  for i, (h, r) in enumerate(zip(hidden, ref_hidden)):
    np.testing.assert_allclose(np.asarray(h), r.numpy(), atol=TOL, rtol=TOL, err_msg=f"hidden state {i}")
  np.testing.assert_allclose(np.asarray(out), ref_out.numpy(), atol=TOL, rtol=TOL, err_msg="final ViT output")
  assert logits.shape == (batch,) + img_size + (out_channels,) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), _to_channels_last(ref_logits), atol=TOL, rtol=TOL,
                             err_msg="UNETR logits")
  # The comparison is not vacuous: the logits vary over the image and across the batch.
  assert np.std(ref_logits) > 1e-2
  if batch > 1:
    assert np.abs(ref_logits[0] - ref_logits[1]).max() > 1e-2


def test_unetr_parity_3d_small():
  _check_unetr((32, 32, 32), hidden_size=96, mlp_dim=192, num_heads=3, feature_size=8)


def test_unetr_parity_2d_small():
  _check_unetr((64, 48), hidden_size=96, mlp_dim=192, num_heads=2, feature_size=8, out_channels=4)


@pytest.mark.slow
def test_unetr_parity_3d_paper_config():
  _check_unetr((96, 96, 96), hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16, out_channels=14,
               batch=1)


def test_bare_vit_parity_few_layers_and_prefix():
  """A bare MONAI ViT (4 layers, qkv bias), keys with and without the `vit.` prefix."""
  img_size = (48, 32, 32)
  ref = _randomised(monai_nets.ViT(
      in_channels=1, img_size=img_size, patch_size=16, hidden_size=64, mlp_dim=128, num_layers=4, num_heads=4,
      qkv_bias=True, spatial_dims=3))
  x = _mr_input(img_size, 2)
  with torch.no_grad():
    ref_out, ref_hidden = ref(torch.from_numpy(x))
  sd = ref.state_dict()
  params = convert_vit_state_dict(sd)
  prefixed = convert_vit_state_dict({f"vit.{k}": v for k, v in sd.items()} | {"out.conv.conv.weight": np.ones(1)})
  jax.tree.map(np.testing.assert_array_equal, params, prefixed)
  vit = ViT(img_size, hidden_size=64, mlp_dim=128, num_layers=4, num_heads=4, qkv_bias=True)
  with jax.default_matmul_precision("highest"):
    out, hidden = vit.apply({"params": params}, jnp.asarray(_to_channels_last(x)))
  assert len(hidden) == 4
  for h, r in zip(hidden, ref_hidden):
    np.testing.assert_allclose(np.asarray(h), r.numpy(), atol=TOL, rtol=TOL)
  np.testing.assert_allclose(np.asarray(out), ref_out.numpy(), atol=TOL, rtol=TOL)


def test_parameter_count_matches_monai_paper_config():
  """UNETR at 96^3, 1 -> 14 channels (the configuration App. D quotes as 92.58 M)."""
  ref = monai_nets.UNETR(in_channels=1, out_channels=14, img_size=(96, 96, 96))
  monai_total = sum(p.numel() for p in ref.parameters())
  # MONAI >= 1.4 builds an unused LayerNorm (norm_cross_attn) in each block; it never enters the forward
  # pass, so we do not carry it.
  unused = sum(p.numel() for n, p in ref.named_parameters() if "norm_cross_attn" in n)
  assert unused in (0, 12 * 2 * 768)
  model = UNETR((96, 96, 96), out_channels=14)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 96, 1))))
  ours = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
  assert ours == monai_total - unused
  assert abs(ours / 1e6 - 92.58) < 0.3  # the paper's figure, from an older MONAI release


def test_checkpoint_file_and_wrappers(tmp_path):
  ref = monai_nets.UNETR(in_channels=1, out_channels=2, img_size=(32, 32), feature_size=4, hidden_size=32,
                         mlp_dim=64, num_heads=2, spatial_dims=2)
  direct = convert_unetr_state_dict(ref.state_dict())
  path = tmp_path / "unetr.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
  from_file = convert_unetr_state_dict(str(path))
  jax.tree.map(np.testing.assert_array_equal, direct, from_file)
  # The converted tree is exactly what our module initialises (same structure and shapes).
  model = UNETR((32, 32), out_channels=2, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))["params"]
  assert jax.tree.structure(init) == jax.tree.structure(direct)
  assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, direct)
  with pytest.raises(ValueError, match="torch .pt or .pth"):
    (tmp_path / "x.npz").write_bytes(b"")
    convert_unetr_state_dict(str(tmp_path / "x.npz"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert_unetr_state_dict(str(tmp_path / "missing.pt"))


def test_bad_state_dicts_raise_clearly():
  ref = monai_nets.UNETR(in_channels=1, out_channels=2, img_size=(32, 32), feature_size=4, hidden_size=32,
                         mlp_dim=64, num_heads=2, spatial_dims=2)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  model = UNETR((32, 32), out_channels=2, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2)

  missing = dict(sd)
  del missing["vit.blocks.5.attn.out_proj.bias"]
  with pytest.raises(ValueError, match=r"missing .*vit/blocks_5/attn/out_proj/bias"):
    convert_unetr_state_dict(missing)

  extra = dict(sd, **{"decoder2.extra.weight": np.zeros((3, 3))})
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): decoder2.extra.weight"):
    convert_unetr_state_dict(extra)

  # Shapes are checked against the target model when one is given (here N: 4 tokens vs 2x2 grid of 64^2).
  bigger = UNETR((64, 64), out_channels=2, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2)
  with pytest.raises(ValueError, match=r"wrong shapes .*position_embeddings: \(1, 4, 32\)"):
    convert_unetr_state_dict(sd, model=bigger)
  convert_unetr_state_dict(sd, model=model)  # the right model passes

  with pytest.raises(ValueError, match="not a MONAI UNETR state dict"):
    convert_unetr_state_dict({"foo.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="expected a state dict"):
    monai_import.load_state_dict([1, 2])  # type: ignore[arg-type]
