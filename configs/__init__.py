"""The experiment configs (YAML), installed with actdict as ``actdict.configs``: a ``pip install actdict``
outside this repository has them too, and a config path that is not found, spelled configs/NAME or NAME,
names the installed copy (``actdict.config.shipped_config``). Run one from anywhere by that path; its
relative paths (``run_dir``) are relative to the folder the command runs in."""
