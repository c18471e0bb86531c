"""SCF (Sphere Confidence Face): the vMF likelihood of the class centre, learning κ only.

Li, Xu, Xu, Shen, Li, Hooi. "Spherical Confidence Learning for Face Recognition." CVPR 2021.
https://openaccess.thecvf.com/content/CVPR2021/papers/Li_Spherical_Confidence_Learning_for_Face_Recognition_CVPR_2021_paper.pdf

Each image i is q_i = vMF(μ_i, κ_i) on the unit sphere S^{D−1} (packed ``[μ | log κ]``,
``--embedding_distribution vmf``). Its target is a Dirac δ at the centre ŵ_y of its class; the paper
minimises KL(δ(z − ŵ_y) ‖ q_i(z)) = −H(δ) − log q_i(ŵ_y), i.e. (the Dirac's entropy being a constant
free of parameters) the negative log-likelihood of the class centre under the image's distribution:

    L = mean_i [ −κ_i μ_iᵀŵ_{y_i} − log C_D(κ_i) ],
    log C_D(κ) = (D/2 − 1) log κ − (D/2) log 2π − log I_{D/2−1}(κ)

(the paper's closed form on the sphere of radius r = 1, where its constant D·log r vanishes). For a
fixed cosine c = μᵀŵ_y, ∂L/∂κ = A_D(κ) − c with A_D = I_{D/2}/I_{D/2−1}: the optimum is
κ* = A_D⁻¹(c) (c > 0), so the learned concentration grows monotonically with the cosine to the
class centre, the paper's interpretation of κ as confidence. As κ → ∞, L/κ → 1 − μᵀŵ_y, the cosine
distance to the class centre.

The paper trains only the κ head, on a network whose mean (and class centres) come from a trained
deterministic classifier: the class declares ``frozen_mean = True`` (the architecture freezes its
backbone and mean head) and the loss detaches μ, so only log κ and the class centres receive
gradients even when the loss is used on its own.

Flags: ``--loss_scf_lr`` (5e-4), the learning rate of the class centres (no weight decay).

Deviations from the paper: the class centres W ∈ ℝ^{C×D} are learned by this loss (initialised
U(±1/√D), normalised inside) instead of being copied from the pretrained classifier: with μ frozen,
the gradient −κ_i μ_i pulls ŵ_c towards the κ-weighted mean direction of its class, the vMF maximum
likelihood estimate. log C_D comes from the stable Bessel function of criteria/_common.py (finite
for κ from 1e-300 to 1e300) instead of scipy's ``ive`` with a 1e-6 guard inside the logarithm.
Memory O(B·D).
"""

from __future__ import annotations

from typing import Annotated

import torch

from ._common import VMF, ClassWeightLoss, log_vmf_normalizer, split_vmf


class SCFLoss(ClassWeightLoss):
    """SCF (Li et al. 2021): −log vMF(ŵ_y; μ, κ), the class centre's likelihood, μ frozen."""

    name = "scf"
    distribution = VMF
    frozen_mean = True

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the SCF class centres"] = 5e-4,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D + 1) packed ``[μ | log κ]``; labels: (B,). Returns a scalar."""
        mean, log_kappa = split_vmf(batch, self.embed_dim)
        labels = self.checked_labels(batch, labels)
        mean = torch.nn.functional.normalize(mean.detach(), dim=1)  # SCF trains the confidence only
        centres = torch.nn.functional.normalize(self.class_weights[labels].to(batch.dtype), dim=1)
        kappa = torch.exp(log_kappa)
        cosine = (mean * centres).sum(1)
        return (-kappa * cosine - log_vmf_normalizer(self.embed_dim, kappa)).mean()
