"""Proximal Newton for the fused group lasso, as an ask/tell state machine.

Problem (theta = (gamma, delta), beta_c = gamma_{j(c)} + delta_c, see ``penalty.py``):

    minimise F(theta) = L(beta) + P(gamma, delta)

with L the mean negative log-likelihood answered by an oracle. Iteration k (Lee, Sun &
Saunders 2014, "Proximal Newton-type methods for minimizing composite functions"):

1. At theta_k the oracle gives L, g = grad_beta L and the per-creative Hessians H_c.
   Residual r_k = ||theta_k - prox_P(theta_k - grad_theta L)||_2 (``optimality.py``); stop
   when r_k <= tol (converged).
2. Solve the penalised quadratic model (``subproblem.QuadraticModel``)
       theta_hat = argmin g'(beta - beta_k) + 1/2 sum_c (beta_c - beta_k,c)' H_c (...) + P(theta)
   inexactly, to a model residual <= max(min(0.1, r_k) r_k, 0.1 tol) (superlinear inexact
   Newton). Direction d = theta_hat - theta_k; exact zeros (fusion, sparse gamma) come from
   the model's exact block minimisation, i.e. prox operations, never from subgradients.
3. Backtracking: t = 1, 1/2, ... until
       F(theta_k + t d) <= F(theta_k) + 1e-4 t Delta,   Delta = g'd_beta + P(theta_hat) - P(theta_k) < 0
   (plus a rounding slack of 1e-13 (1 + |F|)). Each trial is one oracle pass that also returns
   gradient and Hessians, so an accepted trial's pass starts the next iteration: one pass per
   iteration when full steps are accepted (the usual case near the solution).

Lazy curvature (full mode, ``lazy_hessian``, default): at p in the tens a pass's flops are
nearly all Hessians (n p^2 per problem against n p for loss and gradient), and along a
warm-started path the Hessians change little from point to point. So a fit reuses the last
Hessians it received (and a fit warm-started from a FitResult starts from that fit's), and a
pass computes a problem's Hessians only when it asks for them (``wants_hessian``; the oracle's
per-model curvature): at the start of a cold fit, on a backtracking trial, when the Hessians in
use are HESSIAN_MAX_AGE points old, or after a step that made slow progress (actual decrease
below LAZY_RHO of the model's, or a KKT residual that fell by less than a factor 1 / LAZY_RATE).
A stale Hessian is still a positive semi-definite metric: the step is a proximal quasi-Newton
step (Lee, Sun & Saunders 2014 cover any such metric), with the same line search, the same exact
zeros from the prox solves and the same stop on the KKT residual of the exact gradient. In the
spirit of Doikov, Chayti & Jaggi 2023, "Second-order optimization with lazy Hessians". Measured
on the default CV (``benchmarks/bench_lazy_hessian.py``): 0.4x the Hessian evaluations for about
1.1-1.25x the passes, the same solutions to 1e-10.

Large p (``curvature="diagonal"``, ``solver/curvature.py``): the oracle returns only diag(H_c)
and step 2 uses the metric diag(H_c) (``subproblem.DiagonalQuadraticModel``: the same exact
segment-joint solve, O(K p) instead of K p x p eigendecompositions). Steps 1 and 3 are
unchanged. A proximal quasi-Newton (variable-metric) method: linear convergence, so more passes
than Newton, each O(n p) instead of O(n p^2). Two ways to correct the diagonal metric
(``quasi_newton``):

- "anderson" (default): the metric stays diag(H_c) and the iteration theta -> T(theta) (the
  model solution) is Anderson-accelerated (``_anderson``): the trial point is the combination
  of the last AA_MEMORY + 1 model solutions whose residuals T(theta_i) - theta_i combine to the
  smallest norm, a multisecant (limited-memory) correction of the metric from the method's own
  steps; taken only with sufficient decrease of the true objective, else the model step is
  tried with the usual line search. Measured along warm-started paths at 100k rows (with
  the carried secants and reused answers below): 43 and 40 passes for 5 and 4 lambdas at
  p = 200 and 2,000 against 76 and 75 for "spectral" (``benchmarks/LARGE_P.md``);
- "spectral": the former metric sigma_c diag(H_c), sigma_c a per-creative Barzilai-Borwein
  scale from the last accepted step (``_adapt_metric``).

On a path, ``reuse_warm_answer`` starts a fit from its warm start's final oracle answer (the
previous lambda's last pass was at exactly that point, same rows): one pass fewer per lambda;
and an Anderson fit warm-started from a FitResult seeds its memory with that fit's last secant
differences (``FitResult.secant``, ``_secant``).

Ask/tell: ``ask()`` returns the (K, p) point the state needs evaluated (None when done) and
``tell(loss, grad, hess, max_abs_eta)`` hands over the oracle's answer for it, so several
independent problems (folds, alphas, lambdas) can share oracle passes (``fit_many``).

Start: ``warm_start`` (gamma, delta) or a FitResult; otherwise gamma = delta = 0, except that
when the training counts and positives are known (``fit``/``fit_many`` pass them) each gamma_j[0]
starts at the pooled log-odds of its segment (saves ~0.3 passes on average; free).

Convergence is declared only when the measured residual is <= tol; hitting ``max_iter`` (Newton
iterations) or a failed line search ends the fit with ``converged=False`` and a
``ConvergenceWarning``. Divergence (separation) raises ``SeparationError`` (``separation.py``):
before any pass for intercepts the penalty cannot bound (a creative or segment with no positive
or no negative responses), and while fitting from max |eta|; at a point with residual <= tol
the solver keeps iterating while a saturated, unboundable creative still has a large Newton
step (slow divergence), so a diverging fit is never reported as converged.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from segmentation.errors import ConvergenceWarning, SeparationError
from segmentation.solver.optimality import kkt_residual
from segmentation.solver.penalty import FusedGroupPenalty, PenaltyWeights, to_beta
from segmentation.solver.separation import (SLOW_ETA, SeparationMonitor,
                                            check_degenerate_responses)
from segmentation.solver.structure import SegmentStructure
from segmentation.solver.curvature import resolve_curvature
from segmentation.solver.subproblem import DiagonalQuadraticModel, QuadraticModel

ARMIJO = 1e-4
MIN_STEP = 1e-10
DIAGONAL_ITER_FACTOR = 10
BB_SAFETY, BB_MIN, METRIC_MAX = 1.2, 1e-3, 1e6     # spectral metric scaling (diagonal mode)
ROUNDING_STEPS = 10
AA_MEMORY = 10          # Anderson acceleration (diagonal mode): model solutions remembered
AA_METRIC_SCALE = 1.0   # its metric: AA_METRIC_SCALE * diag(H_c), fixed during a fit
AA_REG = 1e-10          # its least-squares regularisation, relative to trace(dF'dF)
# lazy curvature (full mode, ``lazy_hessian``): the Hessians of the last refresh are reused at
# most HESSIAN_MAX_AGE - 1 further points; fresh ones are asked for after a step whose actual
# decrease was below LAZY_RHO of the model's, or whose KKT residual fell by less than LAZY_RATE
HESSIAN_MAX_AGE = 3
LAZY_RHO = 0.5
LAZY_RATE = 0.25
QUASI_NEWTON = ("anderson", "spectral")


@dataclass
class FitResult:
    gamma: np.ndarray            # (m, p)
    delta: np.ndarray            # (K, p); exactly 0 for fused creatives
    beta: np.ndarray             # (K, p) = gamma[segment_of] + delta
    objective: float             # F = loss + penalty at the returned point
    loss: float                  # mean negative log-likelihood on the training rows
    penalty: float
    residual: float              # ||theta - prox_P(theta - grad L)||_2 at the returned point
    n_iter: int                  # Newton iterations (model solves)
    n_passes: int                # oracle evaluations this problem took part in
    converged: bool
    fused: np.ndarray            # (K,) bool: delta_c exactly all zero (always for a free creative)
    message: str
    lam: float = np.nan
    alpha: float = np.nan
    inner_iterations: int = 0    # reduced Newton iterations inside the model solves, summed
    grad: np.ndarray | None = None   # (K, p) beta-gradient of L at the returned point
    hess: np.ndarray | None = None   # diagonal mode: (K, p) Hessian diagonals there; full mode
                                     # with lazy curvature: the (K, p, p) Hessians in use, to
                                     # start the next fit of a path (``drop_hessians`` once used)
    max_abs_eta: np.ndarray | None = None   # (K,) the oracle's max |eta| there
    include: np.ndarray | None = None       # (F,) bool training folds of the fit (None: all)
    accelerated: int = 0         # accepted Anderson steps (diagonal mode)
    hess_age: int = 0            # accepted points since ``hess`` was computed (lazy curvature)
    n_hessians: int = 0          # passes that computed this fit's curvature (full mode: its
                                 # K Hessians; lazy curvature skips them on most passes)
    # Anderson mode: the last secant differences (dF, dG), each (m p + K p, <= AA_MEMORY), that
    # seed the history of a fit warm-started from this one (ProxNewton._anderson)
    secant: tuple | None = None


@dataclass
class Problem:
    """One fit for ``fit_many``: penalty, training folds and optional warm start."""
    lam: float
    alpha: float
    include: np.ndarray | None = None      # (F,) bool training folds; None = all
    warm_start: object = None              # (gamma, delta) or a FitResult
    label: str = ""
    weights: PenaltyWeights | None = None  # per-block penalty factors (penalty.py); None = 1
    # the warm start's own oracle answer (loss, gradient, curvature at its point) starts the fit
    # without a pass; only when warm_start is a FitResult of the same oracle, include and
    # curvature mode (the caller vouches for the oracle; include and shapes are checked)
    reuse_warm_answer: bool = False


def _theta_from(warm_start, m: int, K: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    if warm_start is None:
        return np.zeros((m, p)), np.zeros((K, p))
    if hasattr(warm_start, "gamma"):
        gamma, delta = warm_start.gamma, warm_start.delta
    else:
        gamma, delta = warm_start
    gamma = np.array(gamma, dtype=np.float64, copy=True)
    delta = np.array(delta, dtype=np.float64, copy=True)
    if gamma.shape != (m, p) or delta.shape != (K, p):
        raise ValueError(f"warm start must be gamma ({m}, {p}) and delta ({K}, {p}); "
                         f"got {gamma.shape} and {delta.shape}")
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(delta))):
        raise ValueError("warm start holds non-finite coefficients")
    return gamma, delta


class ProxNewton:
    """State of one proximal Newton fit (module docstring). Drive with ask()/tell()."""

    def __init__(self, structure: SegmentStructure, lam: float, alpha: float, n_features: int,
                 tol: float = 1e-6, max_iter: int = 50, warm_start=None, *,
                 train_counts=None, train_positives=None, label: str = "",
                 curvature: str = "full", weights: PenaltyWeights | None = None,
                 quasi_newton: str = "anderson", lazy_hessian: bool = True):
        self.structure = structure
        # "full": tell() takes (K, p, p) Hessians; "diagonal": (K, p) Hessian diagonals and the
        # model uses the diagonal metric (proximal quasi-Newton, ``solver/curvature.py``)
        self.curvature = resolve_curvature(curvature, int(n_features))
        # diagonal mode: metric sigma_c diag(H_c), sigma_c adapted per creative (_adapt_metric)
        self.metric_scale = np.ones(structure.n_creatives)
        if quasi_newton not in QUASI_NEWTON:
            raise ValueError(f"quasi_newton must be one of {QUASI_NEWTON}; got {quasi_newton!r}")
        self.quasi_newton = quasi_newton
        # full mode: reuse the last Hessians while the steps they give make fast progress
        self.lazy = bool(lazy_hessian) and self.curvature == "full"
        self.hess_age = 0                # accepted points since self.hess was computed
        self._refresh = True             # the next trial's pass should bring fresh Hessians
        self._last_rho = 1.0             # actual / predicted decrease of the last step
        self.n_hessians = 0
        anderson = self.curvature == "diagonal" and quasi_newton == "anderson"
        self.aa_memory = AA_MEMORY if anderson else 0
        if anderson:
            self.metric_scale[:] = AA_METRIC_SCALE
        self._aa_hist: list[tuple[np.ndarray, np.ndarray]] = []   # (theta_i, T(theta_i))
        self._extra_trial = False       # the pending trial is an Anderson point
        self._plain_pen = 0.0
        self.n_accelerated = 0
        self.gamma_prev = self.delta_prev = None
        self._round_ref, self._round_count = None, 0
        self._rounding_trial = False
        self.penalty = FusedGroupPenalty(structure, lam, alpha, weights)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.label = label
        m, K, p = structure.n_segments, structure.n_creatives, int(n_features)
        self.p = p
        if train_counts is not None and train_positives is not None:
            check_degenerate_responses(self.penalty, train_counts, train_positives, label)
        gamma, delta = _theta_from(warm_start, m, K, p)
        if warm_start is None and train_counts is not None and train_positives is not None:
            gamma[:, 0] = _pooled_log_odds(structure, train_counts, train_positives)
        self.gamma, self.delta = self.penalty.project_feasible(gamma, delta)
        self._seed = None
        carried = getattr(warm_start, "hess", None)
        carry = self.lazy and carried is not None and carried.shape == (K, p, p)
        if carry:
            # lazy curvature along a path: the warm start's last Hessians are the first metric
            self.hess = carried
            self.hess_age = int(getattr(warm_start, "hess_age", 0))   # +1 when the start is told
            self._refresh = self.hess_age + 1 >= HESSIAN_MAX_AGE
        sec = getattr(warm_start, "secant", None)
        if (self.aa_memory and sec is not None and sec[0].shape[0] == (m + K) * p
                and np.isfinite(getattr(warm_start, "lam", np.nan))):     # not from a null fit
            self._seed = sec
        self.monitor = SeparationMonitor(self.penalty, label)
        # current accepted point
        self.loss = np.nan
        self.pen_value = self.penalty.value(self.gamma, self.delta)
        self.grad = self.eta = None
        if not carry:
            self.hess = None
        self.residual = np.inf
        # line search
        self._trial = (self.gamma, self.delta)
        self._dir = None
        self._t = 1.0
        self._decrement = 0.0
        self._trial_pen = self.pen_value
        self._started = False
        self.n_iter = 0
        self.n_passes = 0
        self.inner_iterations = 0
        self._done = False
        self._converged = False
        self.message = ""

    # ---- public state -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def objective(self) -> float:
        return self.loss + self.pen_value

    def ask(self) -> np.ndarray | None:
        """The (K, p) coefficients to evaluate next, or None when the fit is finished."""
        if self._done:
            return None
        return to_beta(self.structure, *self._trial)

    @property
    def wants_hessian(self) -> bool:
        """Whether the pass at the point of ``ask()`` should compute this fit's Hessians (full
        mode). Always, unless lazy: then only at the start, on a backtracking trial (where
        the step was too long for the model), when the Hessians in use are HESSIAN_MAX_AGE
        points old, or after a step that made slow progress (LAZY_RHO, LAZY_RATE). A stale
        Hessian is still a positive semi-definite metric, so every step is a proximal
        quasi-Newton step with the same line search, and convergence is still declared only
        from the KKT residual of the exact gradient."""
        if not self.lazy:
            return True
        return self.hess is None or self._t < 1.0 or self._refresh

    def tell(self, loss, grad, hess, max_abs_eta) -> None:
        """The oracle's answer at the point returned by the last ask(); ``hess`` is (K, p, p)
        (full curvature) or the (K, p) Hessian diagonals (``curvature="diagonal"``); None when
        the pass did not compute them (lazy curvature: only when ``wants_hessian`` was False)."""
        if self._done:
            raise RuntimeError("tell() after the fit finished")
        K, p = self.structure.n_creatives, self.p
        loss = float(np.asarray(loss).reshape(()))
        grad = np.asarray(grad, dtype=np.float64).reshape(K, p)
        if hess is None:
            if not (self.lazy and self.hess is not None):
                raise ValueError("tell() needs the curvature at this point (wants_hessian)")
        else:
            hess = np.asarray(hess, dtype=np.float64).reshape(
                (K, p, p) if self.curvature == "full" else (K, p))
            self.n_hessians += 1
        eta = np.asarray(max_abs_eta, dtype=np.float64).reshape(K)
        self.n_passes += 1
        finite = (np.isfinite(loss) and np.all(np.isfinite(grad))
                  and (hess is None or np.all(np.isfinite(hess))))
        if not self._started:
            if not finite:
                raise FloatingPointError(
                    f"the oracle returned a non-finite loss/gradient at the starting point"
                    f"{' (' + self.label + ')' if self.label else ''}; check the warm start")
            self._started = True
            self._accept(loss, grad, hess, eta)
            return
        F_trial = loss + self._trial_pen if finite else np.inf
        F_k = self.objective
        bound = F_k + ARMIJO * self._t * self._decrement + 1e-13 * (1.0 + abs(F_k))
        if self._extra_trial:
            # an Anderson point: taken with the sufficient decrease the model step
            # promised (Armijo with the model's decrement at t = 1), else the model step is tried
            self._extra_trial = False
            if F_trial <= bound:
                self.n_accelerated += 1
                self.gamma, self.delta = self._trial
                self.pen_value = self._trial_pen
                if self.quasi_newton == "spectral":
                    self._adapt_metric(self._trial, grad)
                self._accept(loss, grad, hess, eta)
                return
            self._aa_hist = self._aa_hist[-1:]          # restart the history from this point
            self._seed = None
            self._set_trial(self._plain_pen)
            return
        if F_trial <= bound:
            predicted = self._t * self._decrement
            self._last_rho = (F_trial - F_k) / predicted if predicted < 0 else 1.0
            self.gamma, self.delta = self._trial
            self.pen_value = self._trial_pen
            if self.curvature == "diagonal" and self.quasi_newton == "spectral":
                self._adapt_metric(self._trial, grad)
            self._accept(loss, grad, hess, eta)
            return
        if self._rounding_trial:
            self._finish(False, f"no descent direction (model decrement at rounding level, unit "
                                f"step rejected) at residual {self.residual:.3g}")
            return
        self._t *= 0.5
        if self._t < MIN_STEP:
            self._finish(False, f"line search failed (step < {MIN_STEP:g}) at residual "
                                f"{self.residual:.3g}")
            return
        self._set_trial()

    def result(self) -> FitResult:
        if not self._started:
            raise RuntimeError("result() before any oracle answer")
        beta = to_beta(self.structure, self.gamma, self.delta)
        out = FitResult(
            gamma=self.gamma.copy(), delta=self.delta.copy(), beta=beta,
            objective=self.objective, loss=self.loss, penalty=self.pen_value,
            residual=self.residual, n_iter=self.n_iter, n_passes=self.n_passes,
            converged=self._converged, fused=np.all(self.delta == 0.0, axis=1),
            message=self.message, lam=self.penalty.lam, alpha=self.penalty.alpha,
            inner_iterations=self.inner_iterations, grad=self.grad.copy(), n_hessians=self.n_hessians,
            hess=self.hess.copy() if self.curvature == "diagonal" or self.lazy else None,
            hess_age=self.hess_age,
            max_abs_eta=np.array(self.eta, copy=True),
            accelerated=self.n_accelerated,
            secant=self._secant() if self.aa_memory and (self._aa_hist or self._seed) else None,
        )
        if out.secant is not None and out.secant[0] is None:
            out.secant = None
        return out

    def start_from(self, loss, grad, hess, max_abs_eta) -> None:
        """Begin from an oracle answer already known at the starting point (the warm start's
        own final pass: same oracle, rows and coefficients), without a pass of its own."""
        if self._started:
            raise RuntimeError("start_from() after the fit started")
        self.tell(loss, grad, hess, max_abs_eta)
        self.n_passes -= 1

    # ---- internals ----------------------------------------------------------------------
    def _accept(self, loss, grad, hess, eta) -> None:
        if hess is None:                       # lazy curvature: keep the last Hessians
            hess, self.hess_age = self.hess, self.hess_age + 1
        else:
            self.hess_age = 0
        previous = self.residual
        self.loss, self.grad, self.hess, self.eta = loss, grad, hess, eta
        self.residual = kkt_residual(self.penalty, self.gamma, self.delta, grad)
        if self.lazy:
            slow = np.isfinite(previous) and self.residual > LAZY_RATE * previous
            self._refresh = bool(self.hess_age + 1 >= HESSIAN_MAX_AGE or slow
                                 or self._last_rho < LAZY_RHO)
        self.monitor.update(self.objective, eta)
        direction = None
        if self.residual <= self.tol:
            if np.any(self.monitor.candidates(eta, SLOW_ETA)):
                direction = self._newton_direction(max(1e-3 * self.residual, 1e-14))
                beta = to_beta(self.structure, self.gamma, self.delta)
                step = to_beta(self.structure, direction[0] - self.gamma, direction[1] - self.delta)
                slow = self.monitor.keep_going(eta, beta, step)
            else:
                slow = False
            if not slow:
                self._finish(True, f"converged: residual {self.residual:.3g} <= tol {self.tol:g}")
                return
        if self.n_iter >= self.max_iter:
            self._finish(False, f"max_iter={self.max_iter} reached with residual "
                                f"{self.residual:.3g} (tol {self.tol:g})")
            return
        if direction is None:
            direction = self._newton_direction()
        gh, dh, decrement, pen_hat = direction
        self._rounding_trial = False
        if not decrement < 0 and self._rounding_level_step(decrement, gh, dh):
            decrement = 0.0          # diagonal mode: a step at rounding level (see method)
            self._rounding_trial = True
        elif not decrement < 0:
            self._finish(self.residual <= self.tol,
                         f"no descent direction (model decrement {decrement:.3g}) at residual "
                         f"{self.residual:.3g}")
            return
        self.n_iter += 1
        self._dir = (gh - self.gamma, dh - self.delta, gh, dh)
        self._decrement = decrement
        self._t = 1.0
        self._set_trial(pen_hat)
        if self.aa_memory and not self._rounding_trial:
            self._anderson(gh, dh, pen_hat)

    def _secant(self, seeded: bool = False):
        """(dF, dG): differences of the history's residuals T(theta_i) - theta_i and of its
        T(theta_i), one column per step, oldest first. With ``seeded``, the warm start's own
        last differences fill the memory the history does not yet fill: near the previous
        lambda the map's Jacobian (metric, active set) is nearly the same, so its secant
        pairs are a head start (measured: 1-3 passes fewer per lambda on a path); they are
        dropped at the first rejected Anderson step. Without history: the seed (or None, None)."""
        dF = dG = None
        if len(self._aa_hist) >= 2:
            Xs = np.stack([h[0] for h in self._aa_hist], axis=1)
            Gs = np.stack([h[1] for h in self._aa_hist], axis=1)
            dF, dG = np.diff(Gs - Xs, axis=1), np.diff(Gs, axis=1)
        if self._seed is not None and (seeded or dF is None):
            keep = self.aa_memory - (0 if dF is None else dF.shape[1])
            if keep > 0:
                sF, sG = self._seed[0][:, -keep:], self._seed[1][:, -keep:]
                dF = sF if dF is None else np.hstack([sF, dF])
                dG = sG if dG is None else np.hstack([sG, dG])
        return dF, dG

    def _try_extra(self, point, pen_hat: float) -> None:
        """Make ``point`` the pending trial in place of the model step (tried if it fails)."""
        self._plain_pen = pen_hat
        self._trial = point
        self._trial_pen = self.penalty.value(*point)
        self._extra_trial = True

    def _anderson(self, gh, dh, pen_hat: float) -> None:
        """Diagonal mode: Anderson acceleration of the model-step map T(theta) = theta_hat.

        The diagonal-metric iteration theta_{k+1} = T(theta_k) is a fixed-point iteration
        converging linearly (T is the scaled proximal map of a fixed metric). With the last
        m + 1 pairs (theta_i, T(theta_i)) and residuals f_i = T(theta_i) - theta_i, Anderson
        (type II, Walker & Ni 2011) solves min_c ||f_k - dF c||_2 (dF the differences of the
        f_i; Tikhonov-regularised by AA_REG trace(dF'dF)) and proposes
            theta_AA = T(theta_k) - dG c      (dG the differences of the T(theta_i)),
        a multisecant quasi-Newton step (Fang & Saad 2009): the low-rank correction of the
        diagonal metric that the method's own steps measure. It is the next trial point in
        place of T(theta_k) and is taken only with sufficient decrease of the true objective
        (Armijo against the model step's decrement, ``tell``); otherwise the history restarts
        and T(theta_k) is tried with the usual line search, so the method keeps the plain
        method's descent and convergence guarantees. A combination of feasible points is
        feasible (fixed blocks stay zero); exact zeros and fusion come from the model steps
        (every T(theta_i) is a prox output) and convergence is still declared only by the
        measured KKT residual.
        """
        x = np.concatenate([self.gamma.ravel(), self.delta.ravel()])
        G = np.concatenate([gh.ravel(), dh.ravel()])
        self._aa_hist.append((x, G))
        del self._aa_hist[:-(self.aa_memory + 1)]
        dF, dG = self._secant(seeded=True)
        if dF is None:
            return
        fk = G - x
        A = dF.T @ dF
        reg = AA_REG * float(np.trace(A))
        if not reg > 0:
            return
        try:
            coef = np.linalg.solve(A + reg * np.eye(A.shape[0]), dF.T @ fk)
        except np.linalg.LinAlgError:
            return
        z = G - dG @ coef
        if not np.all(np.isfinite(z)):
            return
        m, p = self.gamma.shape
        point = self.penalty.project_feasible(z[:m * p].reshape(m, p).copy(),
                                              z[m * p:].reshape(self.delta.shape).copy())
        self._try_extra(point, pen_hat)

    def _rounding_level_step(self, decrement: float, gh, dh) -> bool:
        """Diagonal mode only: take a model step whose decrement is lost in rounding.

        The diagonal metric converges linearly, so near a tight tol (1e-8 and below) its
        decrement (~ h r^2) falls below the rounding of F and may compute as >= 0 while the
        residual is still above tol; Newton jumps past this level in one step. Such a step is
        still a prox step of the model, so its unit step is tried with the line search's
        rounding slack (no backtracking: if rejected, the fit stops as before), at most
        ROUNDING_STEPS times since the residual last halved."""
        if self.curvature != "diagonal" or self.residual <= self.tol:
            return False
        if not decrement <= 1e-13 * (1.0 + abs(self.objective)):
            return False
        if np.array_equal(gh, self.gamma) and np.array_equal(dh, self.delta):
            return False
        if self._round_ref is None or self.residual <= 0.5 * self._round_ref:
            self._round_ref, self._round_count = self.residual, 0
        self._round_count += 1
        return self._round_count <= ROUNDING_STEPS

    def _adapt_metric(self, trial, grad: np.ndarray) -> None:
        """Diagonal mode, after an accepted step: spectral (Barzilai-Borwein) scaling of the
        metric sigma_c diag(H_c), per creative (the loss is separable over creatives in beta).

        diag(H_c) ignores the off-diagonal curvature (correlated covariates, finite-sample
        noise), so along the directions the iteration actually moves it can be too small
        (overshoot, backtracking passes) or too large (short steps). With s_c the accepted
        beta_c step and y_c the change of its gradient (y_c = Hbar_c s_c, Hbar_c the Hessian
        averaged along the step), sigma_c = BB_SAFETY * s_c'y_c / s_c' diag(H_c) s_c is the
        curvature along s_c relative to the diagonal's. Clipped to [BB_MIN, METRIC_MAX]; kept
        when undefined (no move, or s'y <= 0 in floating point). The line search is unchanged,
        so any sigma > 0 keeps the method a convergent variable-metric proximal method.
        """
        sv = to_beta(self.structure, *trial) - to_beta(self.structure, self.gamma_prev,
                                                       self.delta_prev)
        sDs = np.einsum("kp,kp,kp->k", sv, self.hess, sv)
        sy = np.einsum("kp,kp->k", sv, grad - self.grad)
        ok = (sDs > 0) & (sy > 0) & np.isfinite(sy)
        sc = self.metric_scale.copy()
        sc[ok] = np.clip(BB_SAFETY * sy[ok] / sDs[ok], BB_MIN, METRIC_MAX)
        self.metric_scale = sc

    def _newton_direction(self, inner_tol: float | None = None):
        beta = to_beta(self.structure, self.gamma, self.delta)
        if self.curvature == "full":
            model = QuadraticModel(self.penalty, beta, self.grad, self.hess)
        else:
            self.gamma_prev, self.delta_prev = self.gamma, self.delta
            model = DiagonalQuadraticModel(self.penalty, beta, self.grad,
                                           self.metric_scale[:, None] * self.hess)
        if inner_tol is None:
            inner_tol = max(min(0.1, self.residual) * self.residual, 0.1 * self.tol)
        gh, dh, info = model.solve(self.gamma, self.delta, inner_tol)
        self.inner_iterations += info.iterations
        pen_hat = self.penalty.value(gh, dh)
        d_beta = to_beta(self.structure, gh - self.gamma, dh - self.delta)
        decrement = float(np.sum(self.grad * d_beta)) + pen_hat - self.pen_value
        return gh, dh, decrement, pen_hat

    def _set_trial(self, pen_hat: float | None = None) -> None:
        dg, dd, gh, dh = self._dir
        if self._t == 1.0:
            self._trial = (gh, dh)              # the model solution itself: exact zeros kept
            self._trial_pen = pen_hat if pen_hat is not None else self.penalty.value(gh, dh)
        else:
            g_t, d_t = self.gamma + self._t * dg, self.delta + self._t * dd
            self._trial = (g_t, d_t)
            self._trial_pen = self.penalty.value(g_t, d_t)

    def _finish(self, converged: bool, message: str) -> None:
        self._done = True
        self._converged = bool(converged)
        self.message = message
        if not (np.all(np.isfinite(self.gamma)) and np.all(np.isfinite(self.delta))):
            raise SeparationError(f"the fit{' (' + self.label + ')' if self.label else ''} "
                                  f"produced non-finite coefficients: {message}")
        if not self._converged:
            warnings.warn(
                f"proximal Newton did not converge{' (' + self.label + ')' if self.label else ''}"
                f" at lambda={self.penalty.lam:g}, alpha={self.penalty.alpha:g}: {message}",
                ConvergenceWarning, stacklevel=3)


def drop_hessians(fits) -> None:
    """Free the full K x p x p Hessians that lazy curvature keeps on FitResults (to start the
    next fit of a path): once a fit has served as a warm start they are dead weight, K p^2
    doubles per fit (the Hessian diagonals of diagonal mode, K p, stay)."""
    for f in fits:
        if f is not None and f.hess is not None and f.hess.ndim == 3:
            f.hess = None


def _pooled_log_odds(structure: SegmentStructure, counts, positives) -> np.ndarray:
    """Per-segment logit of the pooled response rate (clipped away from 0 and 1): a cold start
    for gamma_j[0] that costs no pass."""
    counts = np.asarray(counts, dtype=float)
    positives = np.asarray(positives, dtype=float)
    seg = structure.segment_index
    n = np.bincount(seg, weights=counts, minlength=structure.n_segments)
    s = np.bincount(seg, weights=positives, minlength=structure.n_segments)
    rate = (s + 0.5) / (n + 1.0)
    return np.log(rate) - np.log1p(-rate)


# ---- drivers ------------------------------------------------------------------------------
def _as_problem(pr) -> Problem:
    if isinstance(pr, Problem):
        return pr
    if isinstance(pr, dict):
        return Problem(**pr)
    raise TypeError(f"a problem must be a dict or a Problem, got {type(pr).__name__}")


def _include_mask(oracle, include) -> np.ndarray:
    if include is None:
        return np.ones(oracle.n_folds, dtype=bool)
    inc = np.asarray(include, dtype=bool).reshape(-1)
    if inc.shape != (oracle.n_folds,):
        raise ValueError(f"include must be ({oracle.n_folds},) bool; got shape {inc.shape}")
    return inc


def fit_many(oracle, structure: SegmentStructure, problems, *, tol: float = 1e-6,
             max_iter: int = 50, label: str = "", curvature: str = "auto",
             quasi_newton: str = "anderson", lazy_hessian: bool = True) -> list[FitResult]:
    """Fit independent problems (dicts or ``Problem``: lam, alpha, include, warm_start, label)
    on one oracle, advancing them together: each ``oracle.evaluate`` call carries the stacked
    points of every unfinished problem, with its include mask (M, F). A problem needs about
    one pass per Newton iteration, so the call count is about the largest, not the sum, of
    the problems' pass counts. Results are in the order of ``problems``.

    ``curvature``: "full" (per-creative Hessians, proximal Newton), "diagonal" (their
    diagonals only, proximal quasi-Newton with a diagonal metric: O(K p) per pass result and
    driver work instead of O(K p^2) and O(K p^3)), or "auto" (full when p <= ``AUTO_MAX_P``,
    see ``solver/curvature.py``). In diagonal mode ``max_iter`` is multiplied by
    ``DIAGONAL_ITER_FACTOR`` (the diagonal metric needs more, much cheaper, iterations).
    ``quasi_newton`` (diagonal mode): "anderson" (default: the unscaled diagonal metric with
    Anderson acceleration of its steps, ``ProxNewton._anderson``) or "spectral" (the former
    per-creative Barzilai-Borwein scaling of the diagonal, ``ProxNewton._adapt_metric``).

    ``lazy_hessian`` (full mode, default): a pass computes the Hessians of only the problems
    whose state asks for them (``ProxNewton.wants_hessian``; the oracle's per-model curvature),
    the others reuse their last ones. Measured: ``benchmarks/bench_lazy_hessian.py``.

    A problem with ``reuse_warm_answer`` whose warm start is a FitResult with the same include
    mask and curvature mode starts from that fit's final oracle answer (no pass at the warm
    start: on a path the previous lambda's last pass was at exactly that point)."""
    if oracle.n_creatives != structure.n_creatives:
        raise ValueError(f"oracle has {oracle.n_creatives} creatives, structure has "
                         f"{structure.n_creatives}")
    probs = [_as_problem(pr) for pr in problems]
    masks = [_include_mask(oracle, pr.include) for pr in probs]
    mode = resolve_curvature(curvature, oracle.n_features)
    if mode == "diagonal":
        max_iter = int(max_iter) * DIAGONAL_ITER_FACTOR
    states = []
    for pr, inc in zip(probs, masks):
        name = pr.label or label
        states.append(ProxNewton(
            structure, pr.lam, pr.alpha, oracle.n_features, tol=tol, max_iter=max_iter,
            warm_start=pr.warm_start, train_counts=inc.astype(float) @ oracle.counts,
            train_positives=inc.astype(float) @ oracle.positives, label=name, curvature=mode,
            weights=pr.weights, quasi_newton=quasi_newton, lazy_hessian=lazy_hessian))
        answer = _warm_answer(pr, inc, mode, structure.n_creatives, oracle.n_features)
        if answer is not None:
            states[-1].start_from(*answer)
    while True:
        asks = [(i, s.ask()) for i, s in enumerate(states) if not s.done]
        if not asks:
            break
        idx = [i for i, _ in asks]
        betas = np.stack([b for _, b in asks])
        include = np.stack([masks[i] for i in idx])
        if mode == "full":
            want = np.array([states[i].wants_hessian for i in idx], dtype=bool)
            res = oracle.evaluate(betas, include, curvature=want, label=label)
            curv = [res.hess[row] if want[row] else None for row in range(len(idx))]
        else:
            res = oracle.evaluate(betas, include, curvature="diagonal", label=label)
            curv = res.hess_diag
        for row, i in enumerate(idx):
            states[i].tell(res.loss[row], res.grad[row], curv[row], res.max_abs_eta[row])
    out = []
    for s, inc in zip(states, masks):
        r = s.result()
        r.include = inc.copy()
        out.append(r)
    return out


def _warm_answer(pr: Problem, inc: np.ndarray, mode: str, K: int, p: int):
    """(loss, grad, hess, max_abs_eta) of the warm start when ``pr`` may reuse it, else None."""
    ws = pr.warm_start
    if not pr.reuse_warm_answer or not isinstance(ws, FitResult):
        return None
    shape = (K, p)
    if (mode != "diagonal" or ws.grad is None or ws.hess is None or ws.max_abs_eta is None or ws.include is None
            or ws.hess.shape != shape or not np.array_equal(ws.include, inc)
            or not np.isfinite(ws.loss)):
        return None
    return ws.loss, ws.grad, ws.hess, ws.max_abs_eta


def fit(oracle, structure: SegmentStructure, lam: float, alpha: float, *, include=None,
        warm_start=None, tol: float = 1e-6, max_iter: int = 50, label: str = "",
        curvature: str = "auto", weights: PenaltyWeights | None = None,
        quasi_newton: str = "anderson", reuse_warm_answer: bool = False,
        lazy_hessian: bool = True) -> FitResult:
    """Fit one problem by proximal Newton (one oracle pass per trial point); ``curvature``,
    ``quasi_newton``, ``lazy_hessian`` and ``reuse_warm_answer`` as in ``fit_many`` / ``Problem``;
    ``weights`` per-block penalty factors (``penalty.PenaltyWeights``)."""
    return fit_many(oracle, structure,
                    [Problem(lam, alpha, include=include, warm_start=warm_start, label=label,
                             weights=weights, reuse_warm_answer=reuse_warm_answer)],
                    tol=tol, max_iter=max_iter, label=label, curvature=curvature,
                    quasi_newton=quasi_newton, lazy_hessian=lazy_hessian)[0]
