import sys
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parents[1]
if str(IMAGE_DIR) not in sys.path:
    sys.path.insert(0, str(IMAGE_DIR))
