"""Build hook: the wheel carries the shipped models.

`models/<name>/` in the source tree is the one copy of truth (the fitting scripts write there);
building a wheel copies each model file with its active set, card and parity plots into
`aceserver/data/models/<name>/`, where an installed `aceserver` finds them. Editable installs read
`models/` of the checkout directly, so nothing is copied for them.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# what an installed model needs: the model file, its active set (γ), its card and its parity plots
# (not fit inputs)
SHIPPED = ("{name}.json", "{name}.yace", "model.json", "{name}.activeset.npz", "README.md",
           "report.json", "plots/*.png")


def shipped_model_files(models: Path):
    for folder in sorted(p for p in models.iterdir() if p.is_dir()):
        for pattern in SHIPPED:
            yield from sorted(folder.glob(pattern.format(name=folder.name)))


class build_py_with_models(build_py):
    def run(self):
        super().run()
        models = Path(__file__).resolve().parent / "models"
        if getattr(self, "editable_mode", False) or not models.is_dir():
            return
        target = Path(self.build_lib) / "aceserver" / "data" / "models"
        for src in shipped_model_files(models):
            dest = target / src.relative_to(models)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(src), str(dest), preserve_mode=False)


setup(cmdclass={"build_py": build_py_with_models})
