"""Everything is in setup.cfg but which packages ship: the package, plus the top-level configs/
installed as roberta_jax/configs (one copy in the clone; `--config base` finds it either way)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["roberta_jax", "roberta_jax.*"]) + ["roberta_jax.configs"],
      package_dir={"roberta_jax.configs": "configs"})
