"""The SR networks of mrsr_jax.models.srgan, layer for layer in PyTorch: the side-by-side baseline.

Same layers, widths, kernel sizes, BatchNorm settings and losses as the Flax modules, so the
benchmarks compare frameworks, not architectures. Benchmark-only: the package never imports torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY = 0.2


class ResidualBlock(nn.Module):
  def __init__(self, f: int):
    super().__init__()
    self.conv1 = nn.Conv2d(f, f, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(f, momentum=0.1, eps=1e-5)
    self.conv2 = nn.Conv2d(f, f, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(f, momentum=0.1, eps=1e-5)

  def forward(self, x):
    return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class SRGenerator(nn.Module):
  def __init__(self, scale: int, num_blocks: int = 16, features: int = 64, residual: bool = True):
    super().__init__()
    self.scale, self.residual = scale, residual
    f = features
    self.conv_in = nn.Conv2d(1, f, 9, padding=4)
    self.blocks = nn.Sequential(*[ResidualBlock(f) for _ in range(num_blocks)])
    self.conv_mid = nn.Conv2d(f, f, 3, padding=1, bias=False)
    self.bn_mid = nn.BatchNorm2d(f)
    self.up = nn.ModuleList([nn.Conv2d(f, 4 * f, 3, padding=1) for _ in range(int(math.log2(scale)))])
    self.conv_out = nn.Conv2d(f, 1, 9, padding=4)

  def forward(self, x):
    lr = x
    x = F.relu(self.conv_in(x))
    skip = x
    x = self.bn_mid(self.conv_mid(self.blocks(x))) + skip
    for up in self.up:
      x = F.relu(F.pixel_shuffle(up(x), 2))
    out = self.conv_out(x)
    if self.residual:   # ours with sr.model.residual=True (the default): output over bicubic of the input
      # antialias=True selects the Keys a = -0.5 kernel, as jax.image.resize (a no-op filter when upsampling).
      out = out + F.interpolate(lr, scale_factor=self.scale, mode="bicubic", antialias=True,
                                align_corners=False)
    return out


class SRDiscriminator(nn.Module):
  def __init__(self, features: int = 64):
    super().__init__()
    f = features
    self.conv0 = nn.Conv2d(1, f, 3, padding=1)
    layers, cin = [], f
    for m, s in ((1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)):
      layers += [nn.Conv2d(cin, m * f, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(m * f),
                 nn.LeakyReLU(LEAKY)]
      cin = m * f
    self.body = nn.Sequential(*layers)
    self.dense1 = nn.Linear(cin, 1024)
    self.dense2 = nn.Linear(1024, 1)

  def forward(self, x):
    x = self.body(F.leaky_relu(self.conv0(x), LEAKY))
    x = x.mean(dim=(2, 3))
    return self.dense2(F.leaky_relu(self.dense1(x), LEAKY))[:, 0]


class SwapEncoder(nn.Module):
  """mrsr_jax.models.swap_ae.SwapEncoder: 4 x (3x3 conv + LeakyReLU(0.2) + 2x2 max pool), z_s by a 1x1
  conv after block 2, z_t = dense(global average pool of block 4)."""

  def __init__(self, features=(64, 64, 32, 32), structure_channels: int = 8, texture_dim: int = 256):
    super().__init__()
    cins = (1,) + tuple(features[:-1])
    self.convs = nn.ModuleList([nn.Conv2d(c, f, 3, padding=1) for c, f in zip(cins, features)])
    self.structure = nn.Conv2d(features[1], structure_channels, 1)
    self.texture = nn.Linear(features[-1], texture_dim)

  def forward(self, x):
    z_s = None
    for i, conv in enumerate(self.convs):
      x = F.max_pool2d(F.leaky_relu(conv(x), LEAKY), 2)
      if i == 1:
        z_s = self.structure(x)
    return z_s, self.texture(x.mean(dim=(2, 3)))


def make_lr(hr, scale: int):
  """Anti-aliased bicubic downsampling: what mrsr_jax/data/degrade.py does on device (to ~2e-7)."""
  m = hr.shape[-1]
  return F.interpolate(hr, size=(m // scale, m // scale), mode="bicubic", antialias=True,
                       align_corners=False)


def train_step_fn(gen, disc, opt_g, opt_d, scale: int, *, adv_weight: float = 1e-3,
                  pixel_weight: float = 1.0):
  """One G and one D update with L1 + non-saturating adversarial loss: what the JAX step does with
  the feature terms switched off, LR made from HR inside the step as there.

  The G loss backpropagates into the generator only (`backward(inputs=...)`): the JAX step
  differentiates with respect to the generator's params only, so D's weight gradients are not
  computed there either. (Here D's BatchNorm running averages also move in the G pass, where ours
  keeps them; that is a few hundred scalar updates, nothing next to the convolutions.)
  """
  gen_params = [p for p in gen.parameters()]

  def step(hr):
    lr = make_lr(hr, scale)
    sr = gen(lr)
    g_loss = pixel_weight * (sr - hr).abs().mean()
    if adv_weight:
      g_loss = g_loss + adv_weight * F.softplus(-disc(sr)).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward(inputs=gen_params)
    opt_g.step()
    if not adv_weight:      # as ours: without L_adv, D is neither run nor updated
      return g_loss.detach(), torch.zeros(())
    # One pass over [HR; SR] so BatchNorm sees real and fake together, as ours.
    logits = disc(torch.cat([hr, sr.detach()]))
    real, fake = logits.chunk(2)
    d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return g_loss.detach(), d_loss.detach()

  return step
