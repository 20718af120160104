"""Fixtures shared by several test modules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest


@pytest.fixture
def multi30k_dir() -> Path:
    """The Multi30k task-1 files (*.de.gz, *.en.gz) where the project keeps a copy; skips without them."""
    path = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
    if not (path / "train.de.gz").is_file():
        pytest.skip(f"Multi30k files not found in {path}")
    return path


@pytest.fixture(scope="session")
def toy_pairs() -> list[tuple[str, str]]:
    """600 distinct German-English sentence pairs built from a few phrases; enough to train a
    small SentencePiece model in well under a second."""
    subjects = [("Der Hund", "The dog"), ("Die Katze", "The cat"), ("Ein Mann", "A man"),
                ("Eine Frau", "A woman"), ("Das Kind", "The child"), ("Ein Mädchen", "A girl")]
    verbs = [("sieht", "sees"), ("füttert", "feeds"), ("sucht", "looks for"), ("mag", "likes"), ("trägt", "carries")]
    objects = [("einen Ball", "a ball"), ("das Boot", "the boat"), ("eine Blume", "a flower"),
               ("den Schuh", "the shoe"), ("ein Buch", "a book")]
    places = [(" im Park", " in the park"), (" am Strand", " on the beach"), (" zu Hause", " at home"), ("", "")]
    return [(f"{s[0]} {v[0]} {o[0]}{p[0]}.", f"{s[1]} {v[1]} {o[1]}{p[1]}.")
            for s, v, o, p in itertools.product(subjects, verbs, objects, places)]
