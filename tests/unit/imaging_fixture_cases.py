"""Shared helpers for the imaging tests: the fixture preprocessing records as test cases.

Collection needs the case list before fixtures exist, so the list is read from
``fixtures_path()``; each test still asks for the ``fixtures_dir`` fixture, which fails
loudly when the fixture directory is missing.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import fixtures_path
from triage.vocabulary import Laterality, View

#: (record json, image folder) pairs holding preprocessing records.
RECORD_SETS = (
    ("preprocessing.json", "images"),
    ("preprocessing_synthetic.json", "preprocessing_synthetic"),
)
PIPELINES = ("GMIC", "breast_cancer_classifier")


def preprocessing_cases() -> list[Any]:
    """One pytest param per (record set, image, pipeline), id ``image-pipeline``."""
    cases = []
    root = fixtures_path()
    for json_name, folder in RECORD_SETS:
        path = root / json_name
        if not path.exists():
            cases.append(pytest.param(json_name, folder, "<missing>", "GMIC", id=f"{json_name}"))
            continue
        images = json.loads(path.read_text())["images"]
        for image in images:
            for pipeline in PIPELINES:
                cases.append(
                    pytest.param(json_name, folder, image, pipeline, id=f"{image}-{pipeline}")
                )
    return cases


@lru_cache(maxsize=4)
def load_records(fixtures_dir: Path, json_name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / json_name).read_text())  # type: ignore[no-any-return]


@lru_cache(maxsize=2)
def load_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(path)
    image.setflags(write=False)
    return image


def record_for(
    fixtures_dir: Path, json_name: str, folder: str, image: str
) -> tuple[dict[str, Any], np.ndarray]:
    records = load_records(fixtures_dir, json_name)["images"]
    return records[image], load_png(fixtures_dir / folder / image)


def view_of(record: dict[str, Any]) -> tuple[Laterality, View]:
    return Laterality(record["laterality"]), View(record["view_angle"])


def sha256_float32(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()
