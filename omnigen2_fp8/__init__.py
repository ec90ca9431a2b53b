"""OmniGen2 image editing in BF16 and FP8: a faithful plain-PyTorch transformer, the edit pipeline, the FP8 path."""
from .caching import TaylorSeerConfig, TeaCacheConfig
from .checkpoints import Components, load_components, load_transformer, save_transformer
from .fp8 import Fp8Config, quantize_fp8, save_fp8_checkpoint
from .pipeline import OmniGen2Pipeline
from .transformer import OmniGen2Transformer, TransformerConfig

__all__ = ["OmniGen2Pipeline", "OmniGen2Transformer", "TransformerConfig", "Fp8Config", "quantize_fp8",
           "save_fp8_checkpoint", "Components", "load_components", "load_transformer", "save_transformer",
           "TeaCacheConfig", "TaylorSeerConfig"]
