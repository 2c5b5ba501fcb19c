"""bench/gpu_probe.py on CPU: `--tiny` prints the train, PyTorch-comparison and predict tables with the
documented columns and finite numbers; the time budget is its own (rows past it are skipped or killed,
and say so); identical stages of two configs run once."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

PROBE = str(ROOT / "bench" / "gpu_probe.py")
sys.path.insert(0, str(ROOT / "bench"))
import gpu_probe  # noqa: E402

NOT_NUMBERS = {"config", "stage", "dtype", "batch (microbatches)", "framework", "slices x HR", "note"}
# Figures a CPU has none of: the device's datasheet peak and its memory statistics.
MAY_BE_NA = {"% of peak", "roofline ms", "measured peak GiB", "peak GiB", "ours/this"}


def _run(*args, timeout=1800):
  return subprocess.run([sys.executable, PROBE, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT)


def _tables(stdout: str) -> dict[tuple, list[dict]]:
  """Every markdown table printed: header tuple -> rows as {column: cell}."""
  tables, lines = {}, stdout.splitlines()
  for i, line in enumerate(lines):
    if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
      header = tuple(c.strip() for c in line.strip("|").split("|"))
      rows = []
      for row in lines[i + 2:]:
        if not row.startswith("| "):
          break
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(header), row
        rows.append(dict(zip(header, cells)))
      tables[header] = rows
  return tables


def _number(cell: str) -> float:
  return float(cell.replace(",", ""))


# The default suite's probe: every table and item kind (a train step, the comparison, predict) once,
# in one JAX subprocess; the whole --tiny probe (also the bf16 SR, AE and ViT steps, and the PyTorch
# comparison in its own interpreter) with -m slow: more rows of the same code, ~3x the time.
QUICK = ("--dtypes=float32", "--stages=sr,compare,predict", "--frameworks=jax")


@pytest.fixture(scope="module", params=[pytest.param(QUICK, id="quick"),
                                        pytest.param((), id="full", marks=pytest.mark.slow)])
def tiny(request, tmp_path_factory):
  out = tmp_path_factory.mktemp("probe") / "probe.jsonl"
  proc = _run("--tiny", *request.param, f"--json={out}", "--budget_s=1700")    # a loaded CPU compiles slowly
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return request.param, proc.stdout, [json.loads(line) for line in out.read_text().splitlines()]


def test_tiny_probe_prints_the_tables_with_finite_numbers(tiny):
  args, stdout, records = tiny
  tables = _tables(stdout)
  assert set(tables) == {gpu_probe.TRAIN_COLUMNS, gpu_probe.COMPARE_COLUMNS, gpu_probe.PREDICT_COLUMNS}
  train = tables[gpu_probe.TRAIN_COLUMNS]
  compare = tables[gpu_probe.COMPARE_COLUMNS]
  if args == QUICK:
    assert {(r["stage"], r["dtype"]) for r in train} == {("sr", "float32")}
    assert [r["framework"] for r in compare] == ["jax"]
  else:
    assert {(r["stage"], r["dtype"]) for r in train} == {("sr", "float32"), ("sr", "bfloat16"),
                                                         ("ae", "float32"), ("vit", "float32")}
    assert [r["framework"] for r in compare] == ["jax", "torch"]
  assert len(tables[gpu_probe.PREDICT_COLUMNS]) == 1
  for header, rows in tables.items():
    for row in rows:
      assert row["note"].startswith("ok"), row
      for column, cell in row.items():
        if column in NOT_NUMBERS or cell == "–" and column == "ours/this":
          continue
        if cell == "n/a":
          assert column in MAY_BE_NA, (column, row)
          continue
        value = _number(cell)
        assert math.isfinite(value) and value >= 0, (column, row)
  for row in train:
    # TFLOP/s is the step's count over its time (3 significant digits printed).
    rate = _number(row["TFLOP/step"]) / (_number(row["ms/step"]) / 1e3)
    assert rate == pytest.approx(_number(row["TFLOP/s"]), rel=0.05), row
    assert _number(row["TFLOP/step"]) > 0 and _number(row["predicted peak GiB"]) > 0
  # One JSON line per item, with the count's components.
  assert len(records) == len(train) + len(compare) + 1
  sr = next(r["result"] for r in records if r["item"]["stage"] == "sr")
  assert {"generator", "discriminator", "ViT features", "AE features", "optimiser"} <= set(sr["components"])


def test_budget_is_enforced_by_the_probe():
  # Spent before the first item: every row says so, no item runs.
  proc = _run("--tiny", "--budget_s=1", "--min_item_s=30", timeout=120)
  rows = [r for rows in _tables(proc.stdout).values() for r in rows]
  assert rows and all(r["note"].startswith("skipped: budget spent") for r in rows), proc.stdout
  # Spent while an item runs: it is killed at the deadline and its row says so. The SR step (its
  # compile alone takes tens of seconds here), not the ViT's, which a quiet machine can finish in 4 s.
  proc = _run("--tiny", "--stages=sr", "--dtypes=float32", "--budget_s=4", "--min_item_s=1", timeout=120)
  (row,) = _tables(proc.stdout)[gpu_probe.TRAIN_COLUMNS]
  assert row["note"].startswith("timeout: killed at the budget's end"), proc.stdout


def test_torch_compile_budget_interrupts_the_compile_itself():
  """The budget's alarm lands inside torch.compile's tracing and compiling, which catch Exception: an
  Exception-based CompileBudget came back here wrapped in inductor's BackendCompilerFailed (an "error"
  row), was swallowed by dynamo's tracing in a trial (the compile returned after 10.5 s) and let a
  0.5 s budget run 159 s on a loaded machine (2026-12-04). Started at the compiled step's first call,
  where the probe's alarm lands on a loaded machine."""
  torch = pytest.importorskip("torch")
  import time
  net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(8, 1, 3, padding=1))
  opt = torch.optim.Adam(net.parameters())

  def step(x):
    opt.zero_grad()
    loss = (net(x) ** 2).mean()
    loss.backward()
    opt.step()
    return loss

  t0 = time.monotonic()
  with pytest.raises(gpu_probe.CompileBudget, match="did not finish within --torch_compile_s=1"):
    gpu_probe._within(1.0, torch.compile(step), torch.randn(4, 1, 32, 32))
  assert time.monotonic() - t0 < 5.0


@pytest.mark.slow
def test_torch_compile_is_given_up_after_its_budget():
  """The probe's row (a child process, the tiny networks): where the 0.5 s lands depends on the
  machine's speed (on a quiet one before torch.compile starts); the test above puts it inside."""
  proc = _run("--tiny", "--stages=compare", "--dtypes=float32", "--frameworks=torch_compile",
              "--torch_compile_s=0.5", timeout=300)
  (row,) = _tables(proc.stdout)[gpu_probe.COMPARE_COLUMNS]
  assert row["note"] == "timeout: torch.compile did not finish within --torch_compile_s=0.5", proc.stdout


def test_plan_runs_identical_stages_once_and_the_x4_sr_step_first():
  items = gpu_probe.plan(gpu_probe.parse_args([]))
  assert (items[0]["stage"], items[0]["config"], items[0]["dtype"]) == ("sr", "configs/sr_ixi_x4.py",
                                                                       "float32")
  assert [it.get("framework") for it in items[1:4]] == ["jax", "torch", "torch_compile"]
  same = {(it["config"], it["stage"], it["dtype"]): it.get("same_as") for it in items if it["kind"] == "train"}
  assert same[("configs/sr_ixi_x2.py", "ae", "float32")] == "configs/sr_ixi_x4.py"
  assert same[("configs/sr_ixi_x2.py", "vit", "float32")] == "configs/sr_ixi_x4.py"
  assert same[("configs/sr_fastmri_x4.py", "ae", "float32")] is None       # another crop and dataset
  for config in gpu_probe.PAPER_CONFIGS:
    for dtype in ("float32", "bfloat16"):
      assert same[(config, "sr", dtype)] is None


def test_bad_flags_are_one_error():
  proc = _run("--dtypes=float16", timeout=60)
  assert proc.returncode == 2 and "--dtypes: unknown float16" in proc.stderr
