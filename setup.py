"""Build hook: ship the top-level device_profiles/ and search_spaces/ inside the wheel.

The repository keeps them at the top level (the product's layout); an installed package finds
them as hwsparse/_profiles and hwsparse/_spaces (see hwsparse.cost.profiles.PROFILE_DIR and
hwsparse.space.SPACES_DIR, which fall back to the checkout's folders in an editable install).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"device_profiles": "hwsparse/_profiles", "search_spaces": "hwsparse/_spaces"}


class BuildPy(build_py):  # type: ignore[misc]
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for src, dst in SHIPPED.items():
            target = Path(self.build_lib) / dst
            target.mkdir(parents=True, exist_ok=True)
            for f in sorted((root / src).glob("*.yaml")):
                shutil.copy2(f, target / f.name)


setup(cmdclass={"build_py": BuildPy})
