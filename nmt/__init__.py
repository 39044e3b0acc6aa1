"""nmt: LSTM encoder-decoder translation with attention, on PyTorch."""
from nmt.config import Config, load_config
from nmt.errors import NmtError
from nmt.translate import Translator

__all__ = ["Config", "NmtError", "Translator", "load_config"]
__version__ = "0.1.0"
