"""Compile seconds of the SR train step by dtype and convolution implementation (issue 22, item 3).

  python bench/compile_time.py [--size=32 --batch=2 --dtypes=float32,bfloat16 --conv_impls=xla,cpu
                                --features=0 --dump_dir=/tmp/xla_dump]

The paper's generator and discriminator (configs/base.py) in `compile_step`'s jit, at a small crop:
compile time depends on the graph, not on the batch or crop. Each row runs in a fresh process (no
in-memory or persistent cache) and prints trace + lower seconds, XLA's compile seconds, the number of
HLO instructions before and after optimisation and, with --dump_dir, the size of XLA's dump of the
optimised module. `--platform=cuda` lowers for CUDA instead and reports the lowered module only (XLA:GPU
cannot compile without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(spec: dict) -> dict:
  import time
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  from configs import base
  from mrsr_jax import sharding
  from mrsr_jax.models import srgan
  from mrsr_jax.train import loop, step as step_lib
  from mrsr_jax.train.stage_sr import SRStage

  srgan.backend_conv_impl = lambda platform=None: spec["conv_impl"]   # the models built below
  config = base.get_config()
  config.dtype, config.crop_size, config.sr.batch_size = spec["dtype"], spec["size"], spec["batch"]
  if not spec["features"]:
    config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  stage = SRStage(config, "/tmp/unused")
  mesh = sharding.make_mesh(jax.devices()[:1])
  _, state = loop.init_state(stage, mesh)
  b, m = spec["batch"], spec["size"]
  data = sharding.data_sharding(mesh)
  batch = {"hr": jax.ShapeDtypeStruct((b, m, m, 1), jnp.float32, sharding=data),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)}
  frozen = {}
  if spec["features"]:
    from mrsr_jax import features
    img = jnp.zeros((1, m, m, 1), jnp.float32)
    frozen = jax.eval_shape(lambda: {
        "vit": features.vit_module(config, m).init(jax.random.key(1), img)["params"],
        "ae_enc": features.ae_encoder(config).init(jax.random.key(2), img)["params"]})
  step = step_lib.compile_step(stage.update, mesh)
  t0 = time.perf_counter()
  lowered = step.trace(state, batch, step_lib.step_rng(0, 0), frozen).lower(
      lowering_platforms=(spec["platform"],))
  t1 = time.perf_counter()
  out = {**spec, "lower_s": round(t1 - t0, 2),
         "lowered_ops": lowered.as_text().count(" = stablehlo.") + lowered.as_text().count(" = \"stablehlo.")}
  if spec["platform"] == "cpu":
    compiled = lowered.compile()
    out["compile_s"] = round(time.perf_counter() - t1, 2)
    text = compiled.as_text()
    out["optimised_hlo_lines"] = text.count("\n")
    out["optimised_hlo_bytes"] = len(text)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", type=int, default=32, help="HR crop (the LR input is size / 4)")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--conv_impls", default="xla,cpu")
  p.add_argument("--features", type=int, default=0, help="1: the ViT and AE feature terms in the loss")
  p.add_argument("--platform", default="cpu", choices=("cpu", "cuda"))
  p.add_argument("--dump_dir", default="", help="XLA dump of each row under this folder")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print("RESULT " + json.dumps(_worker(json.loads(args.worker))))
    return
  for dtype in args.dtypes.split(","):
    for impl in args.conv_impls.split(","):
      spec = dict(dtype=dtype, conv_impl=impl, size=args.size, batch=args.batch, features=args.features,
                  platform=args.platform)
      env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
      if args.dump_dir:
        dump = os.path.join(args.dump_dir, f"{dtype}_{impl}")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}").strip()
      r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                         capture_output=True, text=True)
      line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
      if line is None:
        print(f"{dtype} {impl}: failed\n{r.stderr[-2000:]}")
        continue
      res = json.loads(line[7:])
      if args.dump_dir:
        res["dump_mb"] = round(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dump)
                                   for f in fs) / 2**20, 1)
      print(json.dumps(res), flush=True)


if __name__ == "__main__":
  main()
