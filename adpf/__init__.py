"""adpf: Attention-based Dynamic Patch Fusion for face-based age estimation."""
from adpf.attention import ChannelAttention, HybridAttention, RelativeSelfAttention, relative_logits
from adpf.config import ADPFConfig, PRESETS, get_preset
from adpf.losses import (Losses, age_classes, age_distribution, age_estimation_loss, age_std,
                         attention_net_loss, diversity_loss, expected_age,
                         gaussian_label_distribution, kl_loss, log_age_distribution, mae_loss, normalize_maps,
                         predict_age, unit_maps)
from adpf.networks import (ADPF, AttentionNet, FixedPatchFusion, FusionNet, ModelOutput, build_model,
                           count_parameters)
from adpf.patches import crop_patches, fixed_boxes, maps_to_boxes
from adpf.rmhha import RMHHA, AttentionOutput

__all__ = [
    "ADPFConfig", "PRESETS", "get_preset",
    "relative_logits", "RelativeSelfAttention", "ChannelAttention", "HybridAttention",
    "RMHHA", "AttentionOutput",
    "diversity_loss", "unit_maps", "normalize_maps", "age_distribution", "log_age_distribution", "expected_age",
    "age_std", "predict_age", "mae_loss", "gaussian_label_distribution", "kl_loss", "age_estimation_loss",
    "attention_net_loss", "age_classes", "Losses",
    "maps_to_boxes", "crop_patches", "fixed_boxes",
    "AttentionNet", "FusionNet", "ADPF", "FixedPatchFusion", "ModelOutput", "build_model", "count_parameters",
]
__version__ = "0.1.0"
