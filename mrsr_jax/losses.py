"""Every loss of the paper, by equation number, as pure functions of arrays.

  Eq. 3 / 10   L_rec     `l1`
  Eq. 4 / 11   L_adv     `generator_adv_loss` (non-saturating -log D(G(E(x))), as softplus of logits)
  Eq. 5 / 12   L_swap    `generator_adv_loss` on the logits of swapped images
  Eq. 6 / 13   L_disent  `disentangle_loss`
  (D's side)             `discriminator_loss` (the logistic loss the adversarial terms are the other half of)
  Eq. 7        L_str, L_tex  `cosine_loss` on structure / texture codes
  Eq. 8        L_ViT     `cosine_loss` on ViT feature vectors
  Eq. 9 / 21   L_SR      `sr_generator_loss` (+ a `pixel_weight` `l1` or `mse` term, paper_deviations.md)
  Tables 1-2   ablations `TABLE_ABLATIONS` (the rows are only weight settings)

Nothing here knows about networks or parameters: callers run the models and hand in images, logits and
features, which keeps the frozen-extractor question ("no gradient to the ViT / AE") where it belongs,
in what the train step differentiates (see `sr_generator_loss`). Results are float32 scalars whatever
the compute dtype of the inputs (bf16 models give bf16 logits; the reductions here run in float32).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mrsr_jax import errors

# Eq. 9's lambdas as the paper sets them (section 4.1): lambda_1 = lambda_2 = 1, lambda_3 = 0.9.
PAPER_LAMBDAS = {"lambda_vit": 1.0, "lambda_str": 1.0, "lambda_tex": 0.9}

# Rows of Tables 1-2 as settings of Eq. 9's lambdas. The paper names the loss terms each ablation keeps
# and does not restate their weights, so a kept term keeps its full-model weight and a dropped term
# gets 0 (which `sr_generator_loss` then does not compute at all).
TABLE_ABLATIONS: dict[str, dict[str, float]] = {
    "full": {"lambda_vit": 1.0, "lambda_str": 1.0, "lambda_tex": 0.9},
    "tex+vit": {"lambda_vit": 1.0, "lambda_str": 0.0, "lambda_tex": 0.9},
    "str+vit": {"lambda_vit": 1.0, "lambda_str": 1.0, "lambda_tex": 0.0},
    "vit": {"lambda_vit": 1.0, "lambda_str": 0.0, "lambda_tex": 0.0},
    "tex+str": {"lambda_vit": 0.0, "lambda_str": 1.0, "lambda_tex": 0.9},
}

# Defaults of the weights `sr_generator_loss` reads; `pixel_weight` is ours (docs/design.md, SR network).
SR_WEIGHT_DEFAULTS = {"adv_weight": 1.0, **PAPER_LAMBDAS, "pixel_weight": 1.0}


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """L_rec of Eq. 3 (Eq. 10): E_x ||x - G(E(x))||_1, as the mean absolute difference.

  The paper's L1 norm of the image is taken per pixel (mean, not sum), so the weight 0.7 of Eq. 6 and
  the SR weights do not change meaning with the image size. Also the `pixel_weight` term of L_SR.
  """
  x, y = _f32(x), _f32(y)
  if x.shape != y.shape:
    raise ValueError(f"l1: shapes differ: {x.shape} vs {y.shape}")
  return jnp.mean(jnp.abs(x - y))


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared difference: the pixel term of L_SR when `pixel="mse"` (SRCNN's and VDSR's loss)."""
  x, y = _f32(x), _f32(y)
  if x.shape != y.shape:
    raise ValueError(f"mse: shapes differ: {x.shape} vs {y.shape}")
  return jnp.mean(jnp.square(x - y))


# The pixel term's forms (`sr.loss.pixel`): L1 (ours, EDSR's, RDN's) or the mean squared error.
PIXEL_LOSSES = {"l1": l1, "mse": mse}


def pixel_loss(weights: Any):
  """The pixel-term function `weights` (`sr.loss`) names in its `pixel` field; "l1" when absent."""
  if weights is None:
    form = "l1"
  elif isinstance(weights, Mapping) or hasattr(weights, "get"):
    form = weights.get("pixel", "l1")
  else:
    form = getattr(weights, "pixel", "l1")
  if form not in PIXEL_LOSSES:
    raise errors.UserError(f"sr.loss.pixel = {form!r}: must be one of {', '.join(repr(k) for k in PIXEL_LOSSES)}")
  return PIXEL_LOSSES[form]


def generator_adv_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss E[-log D(G(.))], D = sigmoid(logits): mean softplus(-logits).

  This is L_adv of Eq. 4 (Eq. 11) on D's logits for reconstructions G(E(x)), L_swap of Eq. 5 (Eq. 12)
  on D's logits for swapped images G(z_s^1, z_t^2), and L_adv of Eq. 9 (Eq. 21) on D's logits for the
  super-resolved images. -log(sigmoid(l)) = softplus(-l) exactly, and softplus is evaluated without
  overflow for any logit (|l| = 1e4 included).
  """
  return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Logistic discriminator loss E[-log D(real)] + E[-log(1 - D(fake))] (the D side of Eqs. 4, 5, 21).

  = mean softplus(-real) + mean softplus(fake). `fake_logits` may concatenate several kinds of fakes
  (e.g. reconstructions and swaps for the autoencoder's D, as Park et al. do).
  """
  return jnp.mean(jax.nn.softplus(-_f32(real_logits))) + jnp.mean(jax.nn.softplus(_f32(fake_logits)))


def cosine_loss(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """1 - <a, b> of Eqs. 7-8, averaged over the batch; each item is flattened to one vector.

  Used for L_str (structure codes z_s, `[B, h, w, c]`), L_tex (texture codes z_t, `[B, T]`) and L_ViT
  (ViT feature vectors, `[B, K]`). Norms are sqrt(max(||v||^2, eps^2)), as PyTorch's
  `cosine_similarity` clamps them: the loss and its gradient stay finite when a vector is 0 (the
  gradient of a plain ||v|| is 0/0 there), and at a = b the gradient is exactly 0.

  Args:
    a, b: `[B, ...]`, same shape.
    eps: the smallest norm used in the denominator.

  Returns:
    float32 scalar in [0, 2].
  """
  a, b = _f32(a), _f32(b)
  if a.shape != b.shape:
    raise ValueError(f"cosine_loss: shapes differ: {a.shape} vs {b.shape}")
  if a.ndim < 1:
    raise ValueError("cosine_loss: expected a batch [B, ...], got a scalar")
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps))
  nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps))
  cos = jnp.sum(a * b, axis=-1) / (na * nb)
  return jnp.mean(1.0 - cos)


def disentangle_loss(x: jax.Array, recon: jax.Array, rec_fake_logits: jax.Array,
                     swap_fake_logits: jax.Array, *, w_adv: float = 0.7,
                     w_swap: float = 0.7) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_disent of Eq. 6 (Eq. 13) = L_rec + 0.7 L_adv + 0.7 L_swap, for the encoder and generator.

  Args:
    x: the images x^1, `[B, H, W, C]`.
    recon: G(E(x^1)), same shape (Eq. 3).
    rec_fake_logits: D(G(E(x^1))) logits (Eq. 4).
    swap_fake_logits: D(G(z_s^1, z_t^2)) logits, x^2 another image of the same dataset (Eq. 5).
    w_adv, w_swap: the two 0.7s of Eq. 6.

  Returns:
    (total, {"rec", "adv", "swap", "total"}) with the unweighted terms, float32 scalars.
  """
  rec = l1(x, recon)
  adv = generator_adv_loss(rec_fake_logits)
  swap = generator_adv_loss(swap_fake_logits)
  total = rec + w_adv * adv + w_swap * swap
  return total, {"rec": rec, "adv": adv, "swap": swap, "total": total}


def _weight(weights: Any, name: str) -> Any:
  """Reads a weight from a Mapping, a ConfigDict or any attribute holder, else its default."""
  default = SR_WEIGHT_DEFAULTS[name]
  if weights is None:
    return default
  if isinstance(weights, Mapping) or hasattr(weights, "get"):
    return weights.get(name, default)
  return getattr(weights, name, default)


def sr_term_on(weights: Any, name: str) -> bool:
  """Whether `sr_generator_loss` computes the term weighted by `name` (e.g. "adv_weight") under
  `weights`: every weight but a Python / numpy zero switches its term on."""
  return not _is_zero(_weight(weights, name))


def _is_zero(w: Any) -> bool:
  """True for a Python / numpy zero. A traced weight is never 'zero' (its term is then computed)."""
  try:
    return float(w) == 0.0
  except (TypeError, jax.errors.ConcretizationTypeError):
    return False


def sr_generator_loss(
    *,
    sr: jax.Array,
    hr: jax.Array,
    fake_logits: jax.Array | None,
    feats_sr: Mapping[str, jax.Array],
    feats_target: Mapping[str, jax.Array],
    weights: Any = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_SR of Eq. 9 for the SR generator, plus our pixel term:

    L = adv_weight L_adv + lambda_vit L_ViT + lambda_str L_str + lambda_tex L_tex + pixel_weight P(sr, hr)

  L_adv is Eq. 9's (Eq. 21) non-saturating -log D(y) on D's logits for the SR images y; L_ViT (Eq. 8)
  and L_str, L_tex (Eq. 7) are cosine losses between features of y and of the target; the L1 to HR
  is not in Eq. 9 (docs/design.md adds it, `pixel_weight=0` gives the paper's loss exactly). P is the L1
  (`pixel="l1"`, the default) or the mean squared error (`pixel="mse"`, as SRCNN and VDSR train).

  Which target: the caller decides and passes its features as `feats_target`. With
  `feature_target="lr"` (the paper: features of the LR input x, bicubic-upsampled to M x M before the
  ViT and the autoencoder see it) or `"hr"` (features of the ground-truth HR slice). Either way the
  target features do not depend on the generator, so only `feats_sr` carries gradient.

  Frozen extractors: `feats_sr` must be computed *inside* the differentiated function from the SR
  output with the ViT / autoencoder params closed over (or passed as an argument that is not in
  `argnums`); then `jax.grad` gives gradients to the generator only and the extractors stay fixed.
  Nothing here calls `stop_gradient`, so the same loss can be differentiated w.r.t. anything else
  a caller needs.

  A term whose weight is a Python / numpy 0 is not computed at all (its inputs may then be missing:
  `fake_logits=None`, or no such key in the feature dicts), so ablations cost nothing under jit.

  Args:
    sr: generator output y, `[B, M, M, C]`.
    hr: ground truth, same shape (used by the pixel term only).
    fake_logits: D(y) logits `[B, ...]`, or None when adv_weight is 0.
    feats_sr: features of y: `vit` `[B, K]` (f_ViT), `z_s` `[B, h, w, c]`, `z_t` `[B, T]`.
    feats_target: the same keys, features of the target (see above).
    weights: Mapping / ConfigDict / object with `adv_weight`, `lambda_vit`, `lambda_str`,
      `lambda_tex`, `pixel_weight`; a missing field takes `SR_WEIGHT_DEFAULTS` (1, 1, 1, 0.9, 1);
      and `pixel`, the pixel term's form ("l1" when absent).

  Returns:
    (total, breakdown): float32 scalars; breakdown has each computed term unweighted (`adv`, `vit`,
    `str`, `tex`, `pixel`) and `total`.
  """
  terms: dict[str, jax.Array] = {}
  total = jnp.zeros((), jnp.float32)

  def add(name: str, weight: Any, fn) -> None:
    nonlocal total
    if _is_zero(weight):
      return
    value = fn()
    terms[name] = value
    total = total + _f32(weight) * value

  def feature(key: str):
    def fn():
      for which, d in (("feats_sr", feats_sr), ("feats_target", feats_target)):
        if d is None or key not in d:
          raise ValueError(f"sr_generator_loss({which}): no {key!r} features, but its weight is non-zero")
      return cosine_loss(feats_sr[key], feats_target[key])
    return fn

  def adversarial():
    if fake_logits is None:
      raise ValueError("sr_generator_loss(fake_logits): None, but adv_weight is non-zero")
    return generator_adv_loss(fake_logits)

  add("adv", _weight(weights, "adv_weight"), adversarial)
  add("vit", _weight(weights, "lambda_vit"), feature("vit"))
  add("str", _weight(weights, "lambda_str"), feature("z_s"))
  add("tex", _weight(weights, "lambda_tex"), feature("z_t"))
  pixel = pixel_loss(weights)
  add("pixel", _weight(weights, "pixel_weight"), lambda: pixel(sr, hr))
  terms["total"] = total
  return total, terms
