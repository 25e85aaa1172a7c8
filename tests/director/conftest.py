import sys
from pathlib import Path

# helpers (director_servers) importable from the tests of this directory
sys.path.insert(0, str(Path(__file__).parent))
