import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHALLENGE = Path(os.environ.get("CVAE_OPT_CHALLENGE_DATA", ROOT.parent / "shared" / "challenge-data"))


@pytest.fixture(scope="session")
def challenge() -> Path:
    """The challenge files are part of the test contract: missing ones fail the run, never skip it."""
    for name in ("scoring_dataset.pt", "validation_dataset.pt", "two-birds-submission-sample.pt"):
        assert (CHALLENGE / name).is_file(), (
            f"challenge file {CHALLENGE / name} is missing; set CVAE_OPT_CHALLENGE_DATA to the folder that holds it"
        )
    return CHALLENGE


@pytest.fixture
def py() -> str:
    return sys.executable
