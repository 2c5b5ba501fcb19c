"""UNETR's ViT encoder in Flax Linen, generic over 2D and 3D (docs/design.md, "ViT feature extractor").

The module mirrors MONAI's `monai.networks.nets.ViT` (MONAI 1.6, `proj_type="conv"`,
`pos_embed_type="learnable"`, no class token) layer for layer, so that a MONAI state dict maps onto our
parameter tree one-to-one (`monai_import.py` does the mapping, `tests/test_monai_parity.py` checks the
numbers):

  * patch embedding (paper Eq. 14): a conv with kernel = stride = P (channels-last, so a MONAI volume
    `[B, C, H, W, D]` is ours as `[B, H, W, D, C]`; tokens come out in the same row-major (H, W, D) order),
    plus a learnable position embedding `[1, N, K]`;
  * L pre-norm transformer blocks (Eqs. 1, 15-16): `z' = MSA(LN(z)) + z`, `z = MLP(LN(z')) + z'`;
  * MSA (Eqs. 17-19) with MONAI's fused `qkv` projection (laid out as (qkv, head, dim)) and `out_proj`;
  * MLP: Linear -> exact (erf) GELU -> Linear, as torch's default `nn.GELU`;
  * LayerNorm with eps 1e-5 (torch's default), after the last block.

`__call__` returns `(out, hidden_states)` like MONAI: `out` is the final layer-normed sequence, and
`hidden_states` the L raw block outputs (UNETR taps blocks 3, 6, 9 and 12, i.e. indices 3, 6, 9 of the
list and `out`).

Also here: f_ViT (`vit_feature`, the mean token), the self-supervised pretext model (`PretextViT`, paper
3.2: a zero-initialised head on the ViT), and `vit2d_params_from_3d`, which turns 3D weights into a 2D ViT
that sees a slice exactly as the 3D ViT sees a slab of P identical copies of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.LayerNorm's default; MONAI never changes it. (Flax's default is 1e-6.)
LAYER_NORM_EPS = 1e-5

Dtype = Any


def _layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  # Two-pass variance (E[(x - mean)^2]) as torch computes it: the fast E[x^2] - mean^2 loses digits on
  # large activations and would break 1e-4 parity with MONAI.
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class PatchEmbedding(nn.Module):
  """Eq. 14: non-overlapping P^d patches projected to K by a strided conv, plus E_pos.

  Mirrors MONAI's `PatchEmbeddingBlock` (param names `patch_embeddings`, `position_embeddings`).
  """
  img_size: tuple[int, ...]
  patch_size: int
  hidden_size: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    nd = len(self.img_size)
    p = (self.patch_size,) * nd
    x = nn.Conv(
        self.hidden_size, kernel_size=p, strides=p, padding="VALID", dtype=self.dtype,
        param_dtype=self.param_dtype, name="patch_embeddings")(x)
    x = x.reshape(x.shape[0], -1, self.hidden_size)  # row-major over the patch grid, as MONAI's flatten(2)
    n_patches = math.prod(s // self.patch_size for s in self.img_size)
    # MONAI: trunc_normal_(std=0.02, a=-2, b=2) with absolute bounds, i.e. +-100 std (no truncation in
    # practice); flax's bounds are in units of std.
    pos = self.param(
        "position_embeddings", nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0),
        (1, n_patches, self.hidden_size), self.param_dtype)
    x = x + jnp.asarray(pos, self.dtype)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class SABlock(nn.Module):
  """Multi-head self-attention, Eqs. 17-19, as MONAI's `SABlock` (fused `qkv`, `out_proj`)."""
  hidden_size: int
  num_heads: int
  dropout_rate: float = 0.0
  qkv_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    b, n, _ = x.shape
    h = self.num_heads
    d = self.hidden_size // h
    qkv = nn.Dense(
        3 * self.hidden_size, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        name="qkv")(x)
    # MONAI's rearrange "b n (qkv l d) -> qkv b l n d": the fused output is ordered (q|k|v, head, dim).
    qkv = qkv.reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = jnp.einsum("bhxd,bhyd->bhxy", q, k) * (d ** -0.5)  # Eq. 17, K_h = K / n
    # Softmax in float32 so bf16 compute does not flatten the attention distribution.
    att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(self.dtype)
    att = nn.Dropout(self.dropout_rate, deterministic=not train)(att)
    y = jnp.einsum("bhxy,bhyd->bhxd", att, v)  # Eq. 18
    y = y.transpose(0, 2, 1, 3).reshape(b, n, self.hidden_size)  # [SA_1; ...; SA_n]
    y = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="out_proj")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)  # Eq. 19's W_msa above


class MLPBlock(nn.Module):
  """Two linear layers with exact GELU between (MONAI's `MLPBlock`, dropout mode "vit")."""
  hidden_size: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="linear1")(x)
    x = nn.gelu(x, approximate=False)  # torch nn.GELU() default is the erf form
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="linear2")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class TransformerBlock(nn.Module):
  """Pre-norm block, Eqs. 15-16 (MONAI's `TransformerBlock` without cross-attention)."""
  hidden_size: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  qkv_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:   # `train` positional for nn.remat
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = _layer_norm("norm1", **kw)(x)
    x = x + SABlock(self.hidden_size, self.num_heads, self.dropout_rate, self.qkv_bias, name="attn", **kw)(
        y, train=train)
    y = _layer_norm("norm2", **kw)(x)
    return x + MLPBlock(self.hidden_size, self.mlp_dim, self.dropout_rate, name="mlp", **kw)(y, train=train)


def _check_vit_config(img_size: Sequence[int], patch_size: int, hidden_size: int, num_heads: int,
                      owner: str) -> None:
  if len(img_size) not in (2, 3):
    raise ValueError(f"{owner}: img_size must have 2 or 3 entries (2D or 3D), got {tuple(img_size)}")
  if any(s < patch_size for s in img_size):
    raise ValueError(f"{owner}: every img_size entry must be >= patch_size={patch_size}, got {tuple(img_size)}")
  if hidden_size % num_heads:
    raise ValueError(f"{owner}: hidden_size={hidden_size} must be divisible by num_heads={num_heads}")


class ViT(nn.Module):
  """UNETR's ViT (MONAI `ViT`, classification=False), 2D or 3D by `len(img_size)`.

  Input `[B, *img_size, in_channels]` (channels-last). Returns `(out, hidden_states)`: `out` `[B, N, K]` is
  the final LayerNorm'ed sequence, `hidden_states` the list of the `num_layers` block outputs (not normed).
  """
  img_size: tuple[int, ...]
  in_channels: int = 1
  patch_size: int = 16
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  dropout_rate: float = 0.0
  qkv_bias: bool = False
  # Recompute each transformer block's activations (attention maps, MLP hidden layer) in the backward
  # pass from the block's input instead of storing them; same parameters, same values.
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def grid_size(self) -> tuple[int, ...]:
    return tuple(s // self.patch_size for s in self.img_size)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    img_size = tuple(self.img_size)
    _check_vit_config(img_size, self.patch_size, self.hidden_size, self.num_heads, "ViT")
    want = img_size + (self.in_channels,)
    if x.ndim != len(img_size) + 2 or tuple(x.shape[1:]) != want:
      raise ValueError(
          f"ViT: input must be channels-last [B, {', '.join(map(str, want))}] (img_size={img_size}, "
          f"in_channels={self.in_channels}), got shape {tuple(x.shape)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = PatchEmbedding(img_size, self.patch_size, self.hidden_size, self.dropout_rate,
                       name="patch_embedding", **kw)(x, train=train)
    hidden_states = []
    block = nn.remat(TransformerBlock, static_argnums=(2,),
                     policy=jax.checkpoint_policies.nothing_saveable) if self.remat else TransformerBlock
    for i in range(self.num_layers):
      x = block(self.hidden_size, self.mlp_dim, self.num_heads, self.dropout_rate,
                self.qkv_bias, name=f"blocks_{i}", **kw)(x, train)
      hidden_states.append(x)
    x = _layer_norm("norm", **kw)(x)
    # Outputs in float32 whatever the compute dtype: losses and the UNETR skips read them.
    return x.astype(jnp.float32), [h.astype(jnp.float32) for h in hidden_states]


def vit_feature(out: jax.Array) -> jax.Array:
  """f_ViT: the mean over tokens of the final layer-normed sequence, `[B, N, K] -> [B, K]` (float32)."""
  if out.ndim != 3:
    raise ValueError(f"vit_feature: expected the ViT output [B, N, K], got shape {tuple(out.shape)}")
  return jnp.mean(out.astype(jnp.float32), axis=1)


class PretextViT(nn.Module):
  """ViT plus the zero-initialised head of the self-supervised fine-tuning (paper 3.2).

  `vit` holds the `ViT` keyword arguments; the ViT is the submodule `vit`, so `params["vit"]` is a plain
  ViT tree (what the SR stage loads). `per_token=True` gives logits `[B, N, num_classes]` (masked patch
  prediction: one class per quantised patch intensity), `False` gives `[B, num_classes]` from the mean token
  (classification). Kernel and bias start at zero, so the pretext loss starts at log(num_classes) and the
  first gradients move the head only, not the pre-trained ViT.
  """
  vit: Mapping[str, Any]
  num_classes: int
  per_token: bool

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.num_classes < 1:
      raise ValueError(f"PretextViT: num_classes must be >= 1, got {self.num_classes}")
    vit_kwargs = dict(self.vit)
    vit_kwargs["img_size"] = tuple(vit_kwargs["img_size"])
    out, _ = ViT(**vit_kwargs, name="vit")(x, train=train)
    if not self.per_token:
      out = jnp.mean(out, axis=1)
    logits = nn.Dense(
        self.num_classes, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
        dtype=vit_kwargs.get("dtype", jnp.float32), param_dtype=vit_kwargs.get("param_dtype", jnp.float32),
        name="head")(out)
    return logits.astype(jnp.float32)


def vit2d_params_from_3d(params3d: Mapping[str, Any], img_size_2d: Sequence[int], patch_size: int = 16,
                         *, grid3d: Sequence[int] | None = None) -> dict[str, Any]:
  """2D ViT params from 3D ones (docs/design.md: how 3D weights serve 2D slices).

  A 2D slice repeated P times along depth (the last spatial axis, MONAI's D) is seen by the 3D patch conv
  exactly as a 2D conv whose kernel is the 3D kernel summed over depth. The position embedding of the
  3D grid `(gh, gw, gd)` gives its middle depth plane `gd // 2`, resized in-plane (linear) to the 2D grid
  `img_size_2d // patch_size` when that differs. Everything else (blocks, final norm) is shared as is.

  Args:
    params3d: a 3D `ViT` param tree (`variables["params"]`; a `{"params": ...}` dict is accepted too).
    img_size_2d: `(H, W)` of the 2D ViT that will use the result.
    patch_size: P, as in both ViTs.
    grid3d: the 3D model's patch grid `img_size_3d // P`. Only N is stored, so when omitted it is
      inferred: a cube if N is a cube (UNETR checkpoints: 96^3 -> 6^3), else the 2D grid times a depth.
      Pass it for any other 3D size (e.g. (8, 8, 1) would otherwise be read as 4^3).

  Returns:
    A param tree for `ViT(img_size=tuple(img_size_2d), patch_size=patch_size, ...)` with the 3D model's
    other hyper-parameters.
  """
  if "params" in params3d and "patch_embedding" not in params3d:
    params3d = params3d["params"]
  if "patch_embedding" not in params3d:
    raise ValueError(f"vit2d_params_from_3d: params3d is not a ViT param tree (top-level keys: {list(params3d)})")
  img_size_2d = tuple(int(s) for s in img_size_2d)
  if len(img_size_2d) != 2 or any(s < patch_size for s in img_size_2d):
    raise ValueError(f"vit2d_params_from_3d: img_size_2d must be (H, W) with H, W >= patch_size={patch_size}, "
                     f"got {img_size_2d}")
  pe = params3d["patch_embedding"]
  kernel = jnp.asarray(pe["patch_embeddings"]["kernel"])
  if kernel.ndim != 5 or kernel.shape[:3] != (patch_size,) * 3:
    raise ValueError(f"vit2d_params_from_3d: expected a 3D patch kernel {(patch_size,) * 3} + (C, K), got "
                     f"{tuple(kernel.shape)}")
  pos = jnp.asarray(pe["position_embeddings"])
  n, hidden = pos.shape[1], pos.shape[2]
  grid2d = tuple(s // patch_size for s in img_size_2d)
  if grid3d is None:
    grid3d = _infer_grid3d(n, grid2d)
  grid3d = tuple(int(g) for g in grid3d)
  if len(grid3d) != 3 or math.prod(grid3d) != n:
    raise ValueError(f"vit2d_params_from_3d: grid3d={grid3d} does not hold the N={n} position embeddings")
  plane = pos.reshape(grid3d + (hidden,))[:, :, grid3d[2] // 2, :]
  if plane.shape[:2] != grid2d:
    plane = jax.image.resize(plane, grid2d + (hidden,), method="linear")
  new_pe = dict(pe)
  new_pe["patch_embeddings"] = dict(pe["patch_embeddings"], kernel=kernel.sum(axis=2))
  new_pe["position_embeddings"] = plane.reshape(1, -1, hidden).astype(pos.dtype)
  return dict(params3d, patch_embedding=new_pe)


def _infer_grid3d(n: int, grid2d: tuple[int, int]) -> tuple[int, int, int]:
  """The 3D patch grid (gh, gw, gd) behind N = gh*gw*gd position embeddings (see `grid3d` above)."""
  c = round(n ** (1 / 3))
  if c ** 3 == n:
    return c, c, c
  gh, gw = grid2d
  if n % (gh * gw) == 0:
    return gh, gw, n // (gh * gw)
  raise ValueError(
      f"vit2d_params_from_3d: cannot tell the 3D patch grid from N={n} position embeddings (neither a cube "
      f"nor the 2D grid {grid2d} times a depth); pass grid3d=img_size_3d // patch_size")
