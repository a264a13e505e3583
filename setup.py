"""The one packaging rule pyproject.toml cannot say: the wheel ships ``migrations/``.

``migrations/`` stays at the top of the repository (fixed layout) and is installed as
``triage/_migrations`` so that ``triage db upgrade`` works from an installed wheel (the
container image relies on it). ``triage.db.migrate`` looks for the checkout's
``migrations/`` first, then for this copy. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["triage*", "workers*"]),
              "triage._migrations", "triage._migrations.versions"],
    package_dir={"triage._migrations": "migrations"},
    package_data={"triage": ["py.typed", "api/static/*", "api/templates/*.html"],
                  "triage._migrations": ["script.py.mako"]},
)
