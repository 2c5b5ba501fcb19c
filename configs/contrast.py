"""Which contrasts a paper config trains on: the argument after ':' in `--config=configs/sr_*.py:<arg>`
(run.py and `api.load_config` pass it to `get_config`), turned into `config.contrast` (the TFDS builder
config the run reads, prepared with `python -m data_prep --dataset=<dataset>/<contrast>`).

IXI: one model per contrast (default t1), as Table 1 and Table 2's IXI-T2 columns report them and as
the paper's training set says: "500 × 96 = 48,000 training samples" is one contrast's 500 volumes.
fastMRI: one model on PD and FS-PD together (default both), as Table 2's single fastMRI column and the
paper's 227 "pairs of PD and FS-PDWI volumes". The other choice is one argument away either way:
`ixi ... :all` pools T1, T2 and PD in one model (the evaluation report still has a column per
contrast), `fastmri ... :pd` / `:fspd` trains on one. See docs/paper_deviations.md.
"""

CHOICES = {"ixi": {"t1": "t1", "t2": "t2", "pd": "pd", "all": ""},
           "fastmri": {"both": "", "pd": "pd", "fspd": "fspd"}}
DEFAULT = {"ixi": "t1", "fastmri": "both"}


def select(dataset: str, arg: str | None) -> str:
  """`config.contrast` for a paper config's argument (None or "": the paper's choice, `DEFAULT`)."""
  choices = CHOICES[dataset]
  name = (arg or DEFAULT[dataset]).strip().lower()
  if name not in choices:
    raise ValueError(f"{dataset}: unknown contrast {arg!r} after ':' in --config; choose one of "
                     f"{', '.join(choices)} (default {DEFAULT[dataset]})")
  return choices[name]
