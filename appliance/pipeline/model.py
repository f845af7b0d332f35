"""The network (smp U-Net with a ResNet encoder, random init) and the focal loss."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from appliance.pipeline.config import ENCODER_WEIGHTS, FOCAL_GAMMA, PipelineConfig
from appliance.pipeline.patches import IGNORE_LABEL


def build_model(config: PipelineConfig, *, in_channels: int, num_classes: int) -> nn.Module:
    """U-Net with ``config.encoder``, randomly initialised, ``num_classes + 1`` output logits
    (background + K classes; softmax is applied by the loss and at inference)."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    if num_classes < 1:
        raise ValueError(f"num_classes (foreground classes K) must be at least 1, got {num_classes}")
    return smp.Unet(
        encoder_name=config.encoder,
        encoder_weights=ENCODER_WEIGHTS,
        in_channels=in_channels,
        classes=num_classes + 1,
    )


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Categorical (softmax) focal loss, mean over the pixels whose label is not ``IGNORE_LABEL``.

    ``FL = −(1 − p_t)^γ · log p_t`` with ``p_t`` the softmax probability of the true class. smp's
    ``FocalLoss`` is a per-class sigmoid loss, not the softmax form the paper uses, hence this one.

    Parameters
    ----------
    logits : (B, K + 1, H, W) tensor
    target : (B, H, W) int64 tensor
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    valid = target != IGNORE_LABEL
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    # clamp instead of an ``if count == 0`` branch: no host sync per step, and 0 when all is ignored
    return (loss * valid).sum() / valid.sum().clamp(min=1)
