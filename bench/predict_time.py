"""Where `predict.upsample_volume`'s time goes: the generator's own time vs the work around it.

  python bench/predict_time.py [--slices=32 --lr=64 --scale=4 --batch=0 --repeats=2 --compare=old.py]

The paper configs' generator (16 blocks, 64 features) with random weights (timing does not depend on
them), on a volume of `--slices` random LR slices of `--lr`² in scanner units. Prints, in seconds:
  first         the first upsample_volume call of the process (compiles included)
  second        a second call on another volume of the same shape (best of --repeats)
  network       the generator alone on the same slices in the same batches, inputs already on the
                device, outputs left there (best of --repeats): what the network itself costs
  normalise     the host's share: robust_normalise's percentile of the volume
and second / network. `--compare=FILE` times another predict.py the same way (e.g. the previous one:
`git show <commit>:mrsr_jax/predict.py > /tmp/predict_old.py`) with the callable eval used to return.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--slices", type=int, default=32)
  p.add_argument("--lr", type=int, default=64, help="LR slice side (output: lr * scale)")
  p.add_argument("--scale", type=int, default=4)
  p.add_argument("--batch", type=int, default=0, help="predict.batch_size (0: planned)")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--compare", default="", help="another predict.py to time the same way")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import base
  from mrsr_jax import predict, sharding
  from mrsr_jax.data import volumes
  from mrsr_jax.train.stage_sr import generator

  config = base.get_config()
  config.scale = args.scale
  model = generator(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False),
                      out_shardings=sharding.replicated(mesh))(jax.random.key(0))
  rng = np.random.default_rng(0)
  vols = [(1000 * rng.random((args.lr, args.lr, args.slices))).astype(np.float32)
          for _ in range(args.repeats + 1)]

  def best(fn):
    times = []
    for v in vols[1:]:
      t0 = time.perf_counter()
      fn(v)
      times.append(time.perf_counter() - t0)
    return min(times)

  def timed(mod, apply_fn, label):
    t0 = time.perf_counter()
    mod.upsample_volume(apply_fn, vols[0], 2, args.scale, args.batch, mesh)
    first = time.perf_counter() - t0
    second = best(lambda v: mod.upsample_volume(apply_fn, v, 2, args.scale, args.batch, mesh))
    print(f"{label:9s} first {first:7.2f} s   second {second:7.2f} s", flush=True)
    return second

  second = timed(predict, predict.Generator(model, variables), "ours")

  # The network alone: the same batches, device-resident, one compiled generator call each.
  call, batch = predict.plan_batches(predict.Generator(model, variables), (args.lr, args.lr), args.slices,
                                     mesh)
  batch = args.batch or batch
  norm, _ = volumes.robust_normalise(np.moveaxis(vols[0], 2, 0))
  pad = -args.slices % batch
  norm = np.concatenate([norm, np.zeros((pad, args.lr, args.lr), np.float32)])
  xs = [jax.device_put(norm[i:i + batch, ..., None], sharding.data_sharding(mesh))
        for i in range(0, len(norm), batch)]
  jax.block_until_ready(call(xs[0]))

  def network(_):
    jax.block_until_ready([call(x) for x in xs])
  net = best(network)
  normalise = best(lambda v: volumes.robust_normalise(np.moveaxis(v, 2, 0)))
  print(f"network   {net:7.2f} s ({batch} slices per call)   normalise {normalise:.3f} s   "
        f"second / network {second / net:.2f}", flush=True)

  if args.compare:
    spec = importlib.util.spec_from_file_location("predict_compare", args.compare)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)

    def apply(lr):     # what evaluate.load_generator returned before predict.Generator
      return model.apply(variables, lr, train=False).astype(jnp.float32)
    before = timed(other, apply, "compare")
    print(f"compare second / network {before / net:.2f}", flush=True)


if __name__ == "__main__":
  main()
