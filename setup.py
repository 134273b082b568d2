"""Build the Cython hot path in native/ (setuptools reads the rest from pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("native._speedups", ["native/_speedups.pyx"])],
        compiler_directives={"language_level": "3"},
    ),
)
