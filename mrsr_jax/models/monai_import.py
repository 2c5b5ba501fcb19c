"""MONAI UNETR / ViT state dicts -> our Flax params (docs/design.md: "loading MONAI UNETR checkpoints").

Our modules (`unetr.UNETR`, `vit.ViT`) mirror MONAI's names, so a key maps by a fixed rule:

  * dots become tree levels, and a list index joins its list's name: `vit.blocks.3.attn.qkv.weight` ->
    `vit/blocks_3/attn/qkv/kernel`, `encoder2.blocks.0.1.conv1.conv.weight` -> `encoder2/blocks_0/1/conv1/conv/
    kernel` (a `Sequential`'s entries keep their digit names, "0" and "1");
  * leaves: `weight` -> `kernel` for Linear (transposed, torch stores [out, in]) and convs (torch
    [out, in, *k] -> [*k, in, out]); transposed convs (torch [in, out, *k]) also get their kernel flipped,
    because flax's `ConvTranspose` correlates the dilated input where torch's convolves it; `weight` ->
    `scale` for LayerNorm; `bias` and `position_embeddings` unchanged.

Dropped on purpose: `*.norm_cross_attn.*` (MONAI >= 1.4 builds this LayerNorm in every block but never
uses it without cross-attention) and `*.cross_attn.*` (older MONAI; `ViT.load_old_state_dict` drops them too).
Anything else that does not map, any parameter of ours left without a value, and any shape mismatch is
reported together in one ValueError.

torch is imported only to read a `.pt`/`.pth` file, lazily, inside `load_state_dict`; it is never a
dependency of the package. An in-memory dict of numpy arrays (or torch tensors) needs no torch at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrsr_jax import errors
from mrsr_jax.models.unetr import PATCH_SIZE, UNETR
from mrsr_jax.models.vit import ViT

_IGNORED = re.compile(r"(^|\.)(norm_cross_attn|cross_attn)\.")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network")


def load_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
  """A MONAI state dict as `{key: float32 numpy array}`, from a dict or a `.pt`/`.pth` file.

  Common checkpoint wrappers (`{"state_dict": ...}`, `{"model": ...}`, ...) and the `module.` prefix of
  `DataParallel` are removed.
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    path = os.fspath(state_dict_or_path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"MONAI checkpoint {path!r} does not exist")
    if not path.endswith((".pt", ".pth")):
      raise errors.UserError(f"MONAI checkpoint {path!r}: expected a torch .pt or .pth file")
    try:
      import torch  # pylint: disable=g-import-not-at-top  # torch is optional: only needed here.
    except ImportError as e:
      raise ImportError(f"reading {path!r} needs torch (pip install 'mrsr_jax[torch]')") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
  else:
    sd = state_dict_or_path
  if not isinstance(sd, Mapping):
    raise errors.UserError(f"MONAI checkpoint: expected a state dict (mapping of names to tensors), got {type(sd).__name__}")
  for wrapper in _WRAPPERS:
    if wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
      break
  out = {}
  for k, v in sd.items():
    if k.startswith("module."):
      k = k[len("module."):]
    if hasattr(v, "detach"):  # a torch tensor; no torch import needed to read it
      v = v.detach().cpu().float().numpy()
    out[k] = np.asarray(v, dtype=np.float32)
  return out


def _flax_path(key: str) -> tuple[str, ...]:
  """`a.blocks.3.b.weight` -> ("a", "blocks_3", "b", "weight"): a list index joins its list's name."""
  path: list[str] = []
  for tok in key.split("."):
    if tok.isdigit() and path and not path[-1].isdigit() and not re.search(r"_\d+$", path[-1]):
      path[-1] = f"{path[-1]}_{tok}"
    else:
      path.append(tok)
  return tuple(path)


def _is_transposed(path: tuple[str, ...]) -> bool:
  # MONAI's transposed convs: `transp_conv`, `transp_conv_init`, and entry "0" of a PrUp stage.
  owner = path[-3] if len(path) >= 3 else ""
  return owner in ("transp_conv", "transp_conv_init") or (owner == "0" and path[-4].startswith("blocks_"))


def _convert_leaf(path: tuple[str, ...], value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  name = path[-1]
  if name == "weight":
    if value.ndim == 1:  # LayerNorm
      return path[:-1] + ("scale",), value
    if value.ndim == 2:  # Linear: [out, in] -> [in, out]
      return path[:-1] + ("kernel",), value.T
    spatial = tuple(range(2, value.ndim))
    if _is_transposed(path):
      # torch ConvTranspose weight [in, out, *k]; flax's ConvTranspose (transpose_kernel=False) correlates
      # the stride-dilated input, torch convolves it: same kernel up to a spatial flip.
      value = np.flip(value, axis=spatial)
      return path[:-1] + ("kernel",), np.transpose(value, spatial + (0, 1))
    return path[:-1] + ("kernel",), np.transpose(value, spatial + (1, 0))  # [out, in, *k] -> [*k, in, out]
  return path, value


def _template(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameter shapes, from `jax.eval_shape` (no memory, no compute)."""
  img_size = tuple(model.img_size)
  x = jax.ShapeDtypeStruct((1,) + img_size + (model.in_channels,), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
  if set(variables) != {"params"}:
    raise errors.UserError(f"{type(model).__name__}: expected only 'params' collections, got {sorted(variables)}")
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _unflatten(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(v)
  return tree


def _convert(sd: Mapping[str, np.ndarray], model: nn.Module, what: str) -> dict[str, Any]:
  template = _template(model)
  converted: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, bad_shape = [], []
  for key, value in sd.items():
    if _IGNORED.search(key):
      continue
    path, value = _convert_leaf(_flax_path(key), value)
    if path not in template:
      unexpected.append(key)
    elif tuple(value.shape) != template[path]:
      bad_shape.append(f"{key}: {tuple(value.shape)} -> {'/'.join(path)} expects {template[path]}")
    else:
      converted[path] = np.ascontiguousarray(value)
  missing = ["/".join(p) for p in template if p not in converted]
  if unexpected or bad_shape or missing:
    parts = []
    for label, items in (("unexpected keys", unexpected), ("wrong shapes", bad_shape),
                         ("missing (our params with no MONAI key)", missing)):
      if items:
        parts.append(f"{label} ({len(items)}): " + "; ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
    raise errors.UserError(f"{what}: state dict does not match {type(model).__name__}: " + " | ".join(parts))
  return _unflatten(converted)


def _infer_vit_kwargs(sd: Mapping[str, np.ndarray], prefix: str, what: str) -> dict[str, Any]:
  """ViT hyper-parameters that shape the params, read off the state dict (heads do not, so 1 is used)."""
  need = [f"{prefix}patch_embedding.patch_embeddings.weight", f"{prefix}patch_embedding.position_embeddings",
          f"{prefix}blocks.0.mlp.linear1.weight"]
  for k in need:
    if k not in sd:
      raise errors.UserError(f"{what}: missing key {k!r}; not a MONAI ViT/UNETR state dict with proj_type='conv' "
                       f"(first keys: {list(sd)[:5]})")
  kernel = sd[need[0]]
  hidden, in_channels, *patch = kernel.shape
  if len(set(patch)) != 1 or len(patch) not in (2, 3):
    raise errors.UserError(f"{what}: patch kernel {tuple(kernel.shape)} is not a square/cubic 2D/3D patch")
  n_tokens = sd[need[1]].shape[1]
  layers = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k))}
  # Any img_size with N tokens gives the same parameter shapes: lay the grid out along the first axis.
  img_size = (patch[0] * n_tokens,) + (patch[0],) * (len(patch) - 1)
  return dict(img_size=img_size, in_channels=in_channels, patch_size=patch[0], hidden_size=hidden,
              mlp_dim=sd[need[2]].shape[0], num_layers=max(layers) + 1, num_heads=1,
              qkv_bias=f"{prefix}blocks.0.attn.qkv.bias" in sd)


def convert_vit_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike,
                           model: ViT | None = None) -> dict[str, Any]:
  """Params of our `vit.ViT` from a MONAI `ViT` state dict, or the `vit.` part of a `UNETR` one.

  Args:
    state_dict_or_path: a state dict (torch tensors or numpy arrays) or a `.pt`/`.pth` file. Keys may
      carry the `vit.` prefix of a UNETR checkpoint (then every other key, i.e. the decoder, is ignored)
      or none.
    model: optional target `ViT`; its shapes (including N from `img_size`) are checked. Without it the
      hyper-parameters are read off the state dict.

  Returns:
    The `params` tree for `ViT` (pass as `{"params": params}` to `apply`).
  """
  sd = load_state_dict(state_dict_or_path)
  if any(k.startswith("vit.") for k in sd):
    sd = {k[len("vit."):]: v for k, v in sd.items() if k.startswith("vit.")}
  if model is None:
    model = ViT(**_infer_vit_kwargs(sd, "", "convert_vit_state_dict"))
  return _convert(sd, model, "convert_vit_state_dict")


def convert_unetr_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike,
                             model: UNETR | None = None) -> dict[str, Any]:
  """Params of our `unetr.UNETR` from a MONAI `UNETR` state dict (dict or `.pt`/`.pth` file).

  Args:
    state_dict_or_path: the MONAI state dict or checkpoint file.
    model: optional target `UNETR`; its shapes are checked. Without it, the configuration is read off
      the state dict (`norm_name="instance"`, the only one supported).

  Returns:
    The `params` tree for `UNETR` (`params["vit"]` is a plain ViT tree).
  """
  what = "convert_unetr_state_dict"
  sd = load_state_dict(state_dict_or_path)
  if model is None:
    for k in ("encoder1.layer.conv1.conv.weight", "out.conv.conv.weight"):
      if k not in sd:
        raise errors.UserError(f"{what}: missing key {k!r}; not a MONAI UNETR state dict (first keys: {list(sd)[:5]})")
    if any(k.endswith(("running_mean", "norm1.weight")) and not k.startswith("vit.") for k in sd):
      raise errors.UserError(f"{what}: the decoder has normalisation parameters (norm_name='batch' or affine); only "
                       f"MONAI's default norm_name='instance' is supported")
    vit_kw = _infer_vit_kwargs(sd, "vit.", what)
    if vit_kw["patch_size"] != PATCH_SIZE or vit_kw["num_layers"] != 12:
      raise errors.UserError(f"{what}: MONAI's UNETR has patch 16 and 12 layers, this state dict has patch "
                       f"{vit_kw['patch_size']} and {vit_kw['num_layers']} layers")
    model = UNETR(
        img_size=vit_kw["img_size"],  # any size with the same N gives the same shapes
        in_channels=vit_kw["in_channels"], out_channels=sd["out.conv.conv.weight"].shape[0],
        feature_size=sd["encoder1.layer.conv1.conv.weight"].shape[0], hidden_size=vit_kw["hidden_size"],
        mlp_dim=vit_kw["mlp_dim"], num_heads=1, qkv_bias=vit_kw["qkv_bias"],
        res_block="decoder5.conv_block.conv3.conv.weight" in sd)
  return _convert(sd, model, what)
