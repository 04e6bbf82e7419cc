"""fastsca: AT-SCA audio tagging (spatial and channel-wise attention, MIL attention pooling)."""
from fastsca.config import PRESETS, ModelConfig
from fastsca.model import ATSCA, TaggingOutput, build_model

__all__ = ["ATSCA", "ModelConfig", "PRESETS", "TaggingOutput", "build_model"]
