"""Where the repository and the test fixtures are, for tests in any folder."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
