"""Deformation Representation Learning (Xu, Hou et al., BIBM 2020), exactly as METHOD.md (b).

One step, with N originals ``x`` and their elastic deformations ``x̂``:

1. ``[x; x̂]`` goes through the encoder as ONE batch (BatchNorm statistics shared, E10); the map at
   the tap (default conv4_4, M = S/8) is split into ``e`` and ``ê`` (N, C1, M, M).
2. The Feature Enhance Module gives ``f = FEM(e)``, ``f̂ = FEM(ê)`` (N, C2, M, M), again as one batch.
3. L_LSH (eq. 4, E2): the local discriminator scores the aligned pairs (e, f) as positives and
   (ê, f) as negatives, per location.
4. L_GCH (eq. 8 hard, eqs. 9–10 soft) on ``g = L2norm(h)`` and ``ĝ = L2norm(ĥ)``.
5. Prior matching ("as in [14]"): ``z = σ(h)`` of the originals against U[0,1]^C2.

The global vector ``h = GAP(f_pre)`` is pooled from the FEM's concatenated branch outputs *before*
their final ReLU (:meth:`FeatureEnhanceModule.preactivation`), METHOD.md (b) as corrected. Pooled
from the post-ReLU ``f`` it would be non-negative: every cosine between two images would be ≥ 0
(≥ 0.94 at initialisation), so the GCH loss could barely move, and every coordinate of ``σ(h)``
would be ≥ 0.5, which the prior discriminator rejects by a trivial rule while the encoder's prior
loss grows without bound. The pre-activation is a BN output: at initialisation each channel is
centred over the batch, so ``h`` has both signs, and eq. 7 (GAP + L2 norm of F) holds with F taken
before its ReLU. This adds no parameters and keeps the descriptor on the FEM, as the paper has it;
a DIM-style linear layer on GAP(f) would be a projection head the paper does not have. The local
path (step 3) still uses the post-ReLU ``f``. Without the FEM (E9) ``h`` is a learned
``Linear -> BatchNorm1d`` projection of ``GAP(e)`` (:class:`histodrl.nn.fem.GlobalProjection`),
while the local discriminator keeps E9's tiled ``L2norm(GAP(e))``. Option ``global_head="relu"``
restores the earlier post-ReLU pooling, for comparison only.

The encoder, FEM and local discriminator minimise L_LSH + λ·L_GCH + γ·L_prior; the prior
discriminator minimises its own loss. Both are stepped by one Adam over all parameters: Adam is
per-parameter, and each loss reaches only its own parameters (the encoder's prior loss goes through a
copy of the prior discriminator whose weights are detached), so this is the same update as two
optimizers stepped on the same batch.

Speed (issue "Pretraining as fast as the trunk allows", ``benchmarks/pretrain_step.py``): the step
is split in two. :meth:`DRL.pretext_step` draws everything random from the step's generator on the
device (the deformation, the optional sub-pixel shift, the prior samples, in that order) and
prepares the batch; :meth:`DRL.forward_losses` takes tensors only, from the prepared batch to the
loss (encoder taps -> FEM -> local discriminator -> GCH -> prior) and the logged values, with no
host synchronisation and no graph break, so ``--compile`` compiles it whole
(:meth:`DRL.compiled_functions`). The FEM's and the local discriminator's weights are channels_last,
like the maps they receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from histodrl.deform import elastic_deform, paper_sigma_alpha, warp
from histodrl.losses import (
    gch_hard_loss,
    gch_soft_loss,
    lsh_loss,
    lsh_loss_literal,
    sample_uniform_prior,
)
from histodrl.losses.distributed import world_size
from histodrl.nn import FeatureEnhanceModule, LocalDiscriminator, PriorDiscriminator
from histodrl.nn.fem import GlobalProjection
from histodrl.pretext.base import PretextModule
from histodrl.pretext.prior import adversarial_losses

if TYPE_CHECKING:
    from histodrl.commands.pretrain import PretrainOptions


class DRL(PretextModule):
    """Deformation Representation Learning: local structure heterogeneity + global context homogeneity."""

    def __init__(self, options: PretrainOptions | Mapping[str, Any]) -> None:
        super().__init__(options)
        o = self.options
        self.M = self.crop // self.encoder.tap_stride(self.tap)
        if self.M < 1:
            raise ValueError(f"crop {self.crop} is too small for tap {self.tap}")
        c1 = self.encoder.tap_channels(self.tap)
        if o.no_fem:
            self.fem = None
            c2 = c1
        else:
            self.fem = FeatureEnhanceModule(
                c1, max(self.M, 2), branch_channels=self.width(int(o.fem_branch_channels))
            )
            c2 = self.fem.out_channels
        self.global_head = str(o.global_head)
        # Without the FEM the pre-activation global vector comes from a projection of GAP(e).
        self.global_proj = (
            GlobalProjection(c1) if self.fem is None and self.global_head == "preact" else None
        )
        widths = tuple(self.width(w) for w in (512, 256, 256))
        self.local_d = LocalDiscriminator(c1 + c2, widths=widths)
        self.prior_d = PriorDiscriminator(c2) if o.gamma > 0 else None
        # The tapped maps come out of the trunk channels_last (its input is, see ``prepare``): the
        # heads' conv weights take the same layout, so that no weight is reordered per call (what a
        # GPU's NHWC kernels want; on a CPU it measured neither faster nor slower). ``.to(device)``
        # and ``load_state_dict`` keep the layout; the key names do not change.
        for head in (self.fem, self.local_d):
            if head is not None:
                head.to(memory_format=torch.channels_last)

    def tap_name(self) -> str:
        return str(self.options.tap)

    def model_card_lines(self) -> list[str]:
        o = self.options
        lo, hi = o.sigma_range
        size = o.deform_size or o.crop
        return [
            f"- Deformation: sigma ~ U[{lo}, {hi}] x S, alpha = {o.alpha_factor} x S, "
            f"S = {size} px; zero-padded Gaussian smoothing, reflection sampling",
            f"- DRL: tap `{o.tap}`, FEM {'off' if o.no_fem else 'on'}, "
            f"GCH {o.gch} (lambda {o.lambda_}, tau {o.temperature}), "
            f"LSH {o.lsh}, prior gamma {o.gamma}, global vector `{o.global_head}` "
            f"(preset `{o.preset}`)",
        ]

    # -- pieces ------------------------------------------------------------------------------------

    def deform(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = Deform(x) with σ ~ U(range)·S and α = factor·S per image (METHOD.md (d))."""
        o = self.options
        size = int(o.deform_size or min(x.shape[-2:]))
        lo, hi = o.sigma_range
        sigma, _ = paper_sigma_alpha(
            size,
            x.shape[0],
            generator=self.generator,
            sigma_range=(lo, hi),
            alpha_factor=float(o.alpha_factor),
            device=x.device,
        )
        # alpha = factor·S is the same for every image. As a float (the same float32 values as
        # paper_sigma_alpha's tensor) it is not printed into elastic_deform's error message, which
        # histodrl.deform builds before checking, from the tensor: a device read per call.
        alpha = float(o.alpha_factor) * size
        x_hat, _ = elastic_deform(x, sigma, alpha, generator=self.generator)
        return x_hat

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """E16's optional mitigation: shift x by a random sub-pixel offset (|shift| ≤ 0.5 px per
        axis, bilinear), so that the original is interpolated like x̂ and the slight blur of
        interpolation cannot tell the two apart."""
        n, _, h, w = x.shape
        shift = torch.rand(n, 2, 1, 1, generator=self.generator, device=x.device) - 0.5
        return warp(x, shift.expand(n, 2, h, w))

    def _gch(self, g: torch.Tensor, g_hat: torch.Tensor) -> torch.Tensor:
        o = self.options
        kw = {
            "temperature": float(o.temperature),
            "reduction": o.gch_reduction,
            # Negatives from every process; a no-op when training on one.
            "gather_distributed": True,
        }
        if o.gch == "soft":
            return gch_soft_loss(
                g,
                g_hat,
                weight_temperature=float(o.weight_temperature),
                detach_target=bool(o.detach_soft_target),
                **kw,
            )
        return gch_hard_loss(g, g_hat, **kw)

    def prior_sample(self, n: int, device: torch.device) -> torch.Tensor | None:
        """u ~ U[0, 1)^(n, C2), the prior samples of the step (``None`` without the prior term).

        Drawn from the step's generator after the deformation, as
        :func:`histodrl.pretext.prior.prior_losses` draws them, so a seed gives the same numbers;
        drawn before the compiled region, which takes tensors only (dynamo cannot trace a
        ``torch.Generator``).
        """
        if self.prior_d is None:
            return None
        shape = (n, self.prior_d.in_features)
        return sample_uniform_prior(shape, generator=self.generator, device=device)

    def _prior(self, pooled: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder's non-saturating prior loss, prior discriminator's loss) for z = σ(pooled)
        against the prior samples ``u``: :func:`histodrl.pretext.prior.prior_losses` with ``u``
        drawn beforehand."""
        assert self.prior_d is not None
        penalty = float(self.options.prior_penalty)
        return adversarial_losses(self.prior_d, u, torch.sigmoid(pooled), penalty)

    def _count_foreign_negatives(self, g_hat: torch.Tensor) -> torch.Tensor:
        """How many of the gathered deformed descriptors came from other processes (logged as the
        minimum over processes, so a value of N·(world−1) shows every process saw every other's)."""
        from histodrl.losses import gather_distributed

        everyone = gather_distributed(g_hat)
        own = (torch.cdist(everyone.float(), g_hat.float()).min(dim=1).values < 1e-6).sum()
        return (everyone.shape[0] - own).float()

    def context_and_global(self, both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The local discriminator's shared input and the global vectors, from the tapped maps.

        Args:
            both: the tapped maps of ``[x; x̂]``. Shape: (2N, C1, M, M).

        Returns:
            ``context``: F(x) for the local pairs (e, F(x)) and (ê, F(x)): the post-ReLU FEM output
            of the originals (N, C2, M, M), or without the FEM E9's ``L2norm(GAP(e))`` as
            (N, C1, 1, 1), broadcast over the map. ``h``: the global vectors of ``[x; x̂]``
            (2N, C2), of either sign (see the module docstring); ``L2norm(h)`` is F_G (eq. 7) and
            ``σ(h[:N])`` the prior's input.
        """
        n = both.shape[0] // 2
        if self.fem is not None:
            # Positives (e, f) and negatives (ê, f) share F(x), spatially aligned.
            if self.global_head == "relu":
                f_both = self.fem(both)
                return f_both[:n], f_both.mean(dim=(2, 3))
            # The FEM's output is relu(pre) (FeatureEnhanceModule.forward_with_preactivation);
            # only the originals' half of it is used, so only that half goes through the ReLU
            # (forward and backward).
            pre = self.fem.preactivation(both)
            return F.relu(pre[:n]), pre.mean(dim=(2, 3))
        pooled = both.mean(dim=(2, 3))
        # E9: F := X^Enc; the global vector F_G is tiled over the map (broadcast, no copy).
        context = F.normalize(pooled[:n], dim=1)[:, :, None, None]
        h = self.global_proj(pooled) if self.global_proj is not None else pooled
        return context, h

    # -- the step ----------------------------------------------------------------------------------

    def compiled_functions(self) -> dict[str, Any]:
        """``--compile``: the step from the prepared batch to the loss, whole (trunk, FEM, local
        discriminator, GCH, prior), besides the base's encoder taps."""
        return {**super().compiled_functions(), "losses": self.forward_losses}

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.options
        n = x.shape[0]
        # Everything random comes first, from the step's generator, on the device.
        x_hat = self.deform(x)
        if o.resample_original:
            x = self.resample(x)
        u = self.prior_sample(n, x.device)
        batch = self.prepare(torch.cat([x, x_hat]))
        loss, logs, g_hat = self.compiled("losses", self.forward_losses)(batch, u)
        if world_size() > 1 and self.global_step % int(o.log_every) == 0:
            logs["foreign_negatives"] = self._count_foreign_negatives(g_hat)
        return loss, logs

    def forward_losses(
        self, batch: torch.Tensor, u: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The step from the prepared batch to the loss, tensors in and out (what ``--compile``
        compiles): no random draw, no host synchronisation, no branch on a tensor's value.

        Args:
            batch: ``prepare(cat([x, x̂]))``, originals first. Shape: (2N, 3, S, S).
            u: the prior samples (:meth:`prior_sample`), or ``None`` without the prior term.
                Shape: (N, C2).

        Returns:
            ``(loss, logs, ĝ)``: the loss to minimise, the values to log (tensors) and the
            deformed descriptors, detached (for the multi-process negatives count).
        """
        o = self.options
        n = batch.shape[0] // 2
        both = self.encoder.forward_taps(batch, [self.tap])[self.tap]
        context, h = self.context_and_global(both)
        logits = self.local_d.forward_shared(both, context)
        t_pos, t_neg = logits[:n], logits[n:]
        lsh = (lsh_loss_literal if o.lsh == "literal" else lsh_loss)(t_pos, t_neg)

        g, g_hat = F.normalize(h[:n], dim=1), F.normalize(h[n:], dim=1)
        logs: dict[str, torch.Tensor] = {"lsh": lsh}
        loss = lsh
        if o.gch != "none":
            gch = self._gch(g, g_hat)
            loss = loss + float(o.lambda_) * gch
            logs["gch"] = gch
        if self.prior_d is not None:
            assert u is not None
            prior, prior_d = self._prior(h[:n], u)
            loss = loss + float(o.gamma) * prior + prior_d
            logs["prior"] = prior
            logs["prior_d"] = prior_d
        with torch.no_grad():
            logs["mi"] = 2 * math.log(2) - lsh.detach() if o.lsh == "jsd" else -lsh.detach()
            logs["sigmoid_pos"] = torch.sigmoid(t_pos.detach().float()).mean()
            logs["sigmoid_neg"] = torch.sigmoid(t_neg.detach().float()).mean()
            sim = g.detach().float() @ g_hat.detach().float().T
            target = torch.arange(n, device=sim.device)
            logs["gch_acc"] = (sim.argmax(dim=1) == target).float().mean()
            # Cosines of own pairs and of different images: both near -1 (or +1) means that the
            # descriptor only encodes "original or deformed", not the image.
            diagonal = sim.diagonal()
            logs["gch_pos_cos"] = diagonal.mean()
            if n > 1:
                logs["gch_neg_cos"] = (sim.sum() - diagonal.sum()) / (n * (n - 1))
            if self.prior_d is not None:
                # The prior's input z = σ(h): U[0, 1] has standard deviation 1/√12 ≈ 0.289.
                logs["prior_z_std"] = torch.sigmoid(h[:n].detach().float()).std()
        # The main loss minus the prior discriminator's own term is what the paper calls L.
        logs["objective"] = (
            (loss - logs["prior_d"]).detach() if "prior_d" in logs else loss.detach()
        )
        return loss, logs, g_hat.detach()
