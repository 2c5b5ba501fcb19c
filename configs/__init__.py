"""The run configs (ml_collections, one `get_config()` per file), installed as `mrsr_jax.configs`.

Run one with `python run.py --config=configs/<name>.py[:arg]` or load it with
`mrsr_jax.config_loader.load("<name>[:arg]")` (`api.load_config` in a notebook). Every field is declared
in mrsr_jax/config_schema.py (reference: docs/config.md); base.py returns them at their defaults.
"""
