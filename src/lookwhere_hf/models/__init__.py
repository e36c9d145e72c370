"""The model families of lookwhere_hf, one sub-package each (transformers' `models/<family>/` layout)."""
