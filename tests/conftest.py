import sys
from pathlib import Path

import pytest

from cvae_opt.data import challenge_dir

ROOT = Path(__file__).resolve().parents[1]
CHALLENGE = challenge_dir()  # the package's copy; CVAE_OPT_CHALLENGE_DATA overrides


@pytest.fixture(scope="session")
def challenge() -> Path:
    """The challenge files are part of the test contract: missing ones fail the run, never skip it."""
    for name in ("scoring_dataset.pt", "validation_dataset.pt", "two-birds-submission-sample.pt"):
        assert (CHALLENGE / name).is_file(), (
            f"challenge file {CHALLENGE / name} is missing: it ships in cvae_opt/challenge_data/ "
            "(or unset CVAE_OPT_CHALLENGE_DATA)"
        )
    return CHALLENGE


@pytest.fixture
def py() -> str:
    return sys.executable
