"""What pyproject.toml cannot say: the packages (found, so a new method package needs no line here) plus the
embedded models and evaluators in ``assets/``, shipped inside the wheel as ``backend/assets`` so an installed
``speedlab`` finds them (``backend.paths.ASSETS``)."""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["backend", "backend.*", "app", "app.*", "speedlab", "speedlab.*"])
setup(packages=[*PACKAGES, "backend.assets"], package_dir={"backend.assets": "assets"})
