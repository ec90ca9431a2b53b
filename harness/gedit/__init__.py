"""GEdit-Bench quality of OmniGen2 per precision: `python -m harness.gedit` (see `harness/gedit/__main__.py`)."""
