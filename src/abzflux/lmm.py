"""Linear mixed models with one grouping factor, fitted as R's ``lme4::lmer(..., REML = TRUE)``
and tested as ``lmerTest`` does (t tests of the fixed effects with Satterthwaite's degrees of
freedom).

Model: y = X β + Z_g b_g + ε, with b_g ~ N(0, σ² Λ Λ') independently per group g and
ε ~ N(0, σ² I). Λ is the q × q lower-triangular relative Cholesky factor; its lower triangle
taken column by column is lme4's ``theta`` (for a random intercept and slope: λ11, λ21, λ22),
with the diagonal bounded below by 0.

- Fit: the profiled REML criterion of lme4 (``ldL2 + ldRX2 + (n − p)(1 + log(2π pwrss/(n − p)))``)
  is minimised over θ (scipy L-BFGS-B, bounds as lme4's); β̂ and σ̂² = pwrss/(n − p) follow.
  The per-group blocks go through the Woodbury identity, so only q × q and p × p systems are
  solved.
- Satterthwaite (lmerTest's ``as_lmerModLmerTest`` and ``contest1D``): with varpar = (θ, σ),
  A = 2 H⁺ where H is the Hessian of the (non-profiled) REML deviance in varpar at the optimum
  (pseudo-inverse over eigenvalues > 1e-8, as lmerTest), C(varpar) = σ² (X'V⁻¹X)⁻¹ and, for a
  contrast L, df = 2 (L C L')² / (g' A g) with g = ∂(L C L')/∂varpar. The derivatives are
  central differences with Richardson extrapolation, four halvings, as numDeriv's: the gradient
  g with steps 1e-4 relative (1e-4 absolute at 0), the Hessian H with numDeriv::hessian's
  default 0.1 relative, which lmerTest uses (smaller steps give other df: docs/fire.md).
- Singular fit: as ``lme4::isSingular(tol = 1e-4)``, a diagonal element of Λ below 1e-4.
- Convergence: lme4's gradient check (max |H⁻¹ g| of the profiled criterion < 0.002; for a
  singular fit, max |g| over the coordinates off their bound) and no negative eigenvalue of the
  deviance Hessian (lmerTest's "Model failed to converge" warning).
- Optimum: lme4's BOBYQA can stop at λ11 = 0 when the criterion is flat or has several local
  minima; here the criterion is minimised from several starts and the lowest is kept, so on such
  data the REML criterion here is lower than lme4's (docs/fire.md lists the cases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

#: lme4's default tolerance of ``isSingular``.
SINGULAR_TOL = 1e-4
#: lme4's default tolerance of the gradient convergence check (``check.conv.grad``).
GRAD_TOL = 2e-3
#: lmerTest's tolerance on the eigenvalues of the deviance Hessian.
EIGEN_TOL = 1e-8


@dataclass(frozen=True)
class LmerFit:
    """A fitted model: fixed effects with SEs, Satterthwaite df, t and two-sided p; lme4's θ,
    σ, the REML criterion, and the fit's flags. ``messages``: what lme4 / lmerTest would warn."""

    names: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    df: np.ndarray
    t: np.ndarray
    p: np.ndarray
    theta: np.ndarray
    sigma: float
    reml: float
    singular: bool
    converged: bool
    messages: tuple[str, ...]

    def re_cov(self) -> np.ndarray:
        """The random effects' covariance matrix σ² Λ Λ'."""
        lam = _lambda(self.theta, _q_of(len(self.theta)))
        return self.sigma**2 * lam @ lam.T

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"estimate": self.beta, "se": self.se, "df": self.df, "t": self.t, "p": self.p}, index=list(self.names)
        )


def _q_of(ntheta: int) -> int:
    q = int(round((np.sqrt(8 * ntheta + 1) - 1) / 2))
    assert q * (q + 1) // 2 == ntheta
    return q


def _lambda(theta: np.ndarray, q: int) -> np.ndarray:
    lam = np.zeros((q, q))
    k = 0
    for j in range(q):  # column by column, lower triangle (lme4's order)
        for i in range(j, q):
            lam[i, j] = theta[k]
            k += 1
    return lam


def _diag_index(q: int) -> list[int]:
    out, k = [], 0
    for j in range(q):
        for i in range(j, q):
            if i == j:
                out.append(k)
            k += 1
    return out


class _Blocks:
    """Sufficient per-group cross-products of (y, X, Z)."""

    def __init__(self, y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray):
        codes, _ = pd.factorize(groups, sort=True)
        G = int(codes.max()) + 1
        self.n, self.p = X.shape
        self.q = Z.shape[1]
        self.G = G
        self.ZtZ = np.zeros((G, self.q, self.q))
        self.ZtX = np.zeros((G, self.q, self.p))
        self.Zty = np.zeros((G, self.q))
        np.add.at(self.ZtZ, codes, Z[:, :, None] * Z[:, None, :])
        np.add.at(self.ZtX, codes, Z[:, :, None] * X[:, None, :])
        np.add.at(self.Zty, codes, Z * y[:, None])
        self.XtX = X.T @ X
        self.Xty = X.T @ y
        self.yty = float(y @ y)

    def solve(self, theta: np.ndarray) -> dict:
        """log|V|, X'V⁻¹X, β̂(θ) and pwrss for relative covariance V = I + Z Λ Λ' Z'."""
        lam = _lambda(theta, self.q)
        A = np.einsum("ji,gjk,kl->gil", lam, self.ZtZ, lam)
        M = A + np.eye(self.q)
        sign, logdet = np.linalg.slogdet(M)
        u = np.einsum("ji,gjk->gik", lam, self.ZtX)  # Λ'Z'X per group
        w = np.einsum("ji,gj->gi", lam, self.Zty)
        Mu = np.linalg.solve(M, u)
        Mw = np.linalg.solve(M, w[:, :, None])[:, :, 0]
        XVX = self.XtX - np.einsum("gip,gir->pr", u, Mu)
        XVy = self.Xty - np.einsum("gip,gi->p", u, Mw)
        yVy = self.yty - float(np.einsum("gi,gi->", w, Mw))
        beta = np.linalg.solve(XVX, XVy)
        pwrss = yVy - float(beta @ XVy)
        s2, ldRX2 = np.linalg.slogdet(XVX)
        return {"ldL2": float(logdet.sum()), "ldRX2": float(ldRX2), "XVX": XVX, "beta": beta, "pwrss": pwrss}

    def profiled_reml(self, theta: np.ndarray) -> float:
        s = self.solve(theta)
        nmp = self.n - self.p
        if s["pwrss"] <= 0:
            return np.inf
        return s["ldL2"] + s["ldRX2"] + nmp * (1.0 + np.log(2 * np.pi * s["pwrss"] / nmp))

    def reml_vp(self, varpar: np.ndarray) -> float:
        """REML deviance in (θ, σ), as lmerTest's ``devfun_vp``."""
        theta, sigma2 = varpar[:-1], varpar[-1] ** 2
        s = self.solve(theta)
        return s["ldL2"] + s["ldRX2"] + s["pwrss"] / sigma2 + (self.n - self.p) * np.log(2 * np.pi * sigma2)

    def covbeta(self, varpar: np.ndarray) -> np.ndarray:
        s = self.solve(varpar[:-1])
        return varpar[-1] ** 2 * np.linalg.inv(s["XVX"])


def _steps(x: np.ndarray, d: float) -> np.ndarray:
    """numDeriv's first steps: d·|x|, or 1e-4 where |x| < sqrt(eps/7e-7)."""
    return np.abs(d * x) + 1e-4 * (np.abs(x) < np.sqrt(np.finfo(float).eps / 7e-7))


def _richardson(vals: list) -> np.ndarray:
    """Extrapolate a sequence of O(h²)-accurate estimates at h, h/2, h/4, ..."""
    a = [np.asarray(v, dtype=float) for v in vals]
    for m in range(1, len(a)):
        f = 4.0**m
        a = [(f * a[k + 1] - a[k]) / (f - 1) for k in range(len(a) - 1)]
    return a[0]


def jacobian(f, x: np.ndarray, d: float = 1e-4, r: int = 4) -> np.ndarray:
    """∂f/∂x (f: R^k → R^m flattened), as ``numDeriv::jacobian``: central differences at
    steps h, h/2, h/4, h/8 (h = d·|x|) with Richardson extrapolation."""
    x = np.asarray(x, dtype=float)
    h0 = _steps(x, d)
    cols = []
    for i in range(len(x)):
        est = []
        for k in range(r):
            h = h0[i] / 2**k
            e = np.zeros_like(x)
            e[i] = h
            est.append((np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2 * h))
        cols.append(_richardson(est))
    return np.stack(cols, axis=-1)


def hessian(f, x: np.ndarray, d: float = 0.1, r: int = 4) -> np.ndarray:
    """Hessian of a scalar f as ``numDeriv::hessian`` (``genD``; steps 0.1·|x|, Richardson
    extrapolation over four halvings). lmerTest's df rest on this approximation; the relative
    steps are large, so it is reproduced step for step rather than computed more exactly."""
    x = np.asarray(x, dtype=float)
    k = len(x)
    h0 = _steps(x, d)
    f0 = f(x)
    hd = np.zeros(k)
    for i in range(k):
        est = []
        for m in range(r):
            e = np.zeros(k)
            e[i] = h0[i] / 2**m
            est.append((f(x + e) - 2 * f0 + f(x - e)) / e[i] ** 2)
        hd[i] = float(_richardson(est))
    H = np.diag(hd)
    for i in range(k):
        for j in range(i):
            est = []
            for m in range(r):
                h = h0 / 2**m
                e = np.zeros(k)
                e[i], e[j] = h[i], h[j]
                est.append((f(x + e) - 2 * f0 + f(x - e) - hd[i] * h[i] ** 2 - hd[j] * h[j] ** 2) / (2 * h[i] * h[j]))
            H[i, j] = H[j, i] = float(_richardson(est))
    return H


def _satterthwaite(b: _Blocks, theta: np.ndarray, sigma: float, d: float = 0.1) -> tuple:
    """vcov(β̂), Satterthwaite df per coefficient and the deviance Hessian's eigenvalues."""
    varpar = np.append(theta, sigma)
    evals, evecs = np.linalg.eigh(hessian(b.reml_vp, varpar, d=d))
    pos = evals > EIGEN_TOL
    A = 2 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    C = b.covbeta(varpar)
    p = C.shape[0]
    Jac = jacobian(b.covbeta, varpar).reshape(p, p, len(varpar))
    df = np.array([2 * C[j, j] ** 2 / float(Jac[j, j, :] @ A @ Jac[j, j, :]) for j in range(p)])
    return C, df, evals


def satterthwaite_df(
    y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray, theta: np.ndarray, sigma: float, d: float = 0.1
) -> np.ndarray:
    """Satterthwaite df of each fixed effect at (θ, σ), with the deviance Hessian's steps d·|x|
    (lmerTest's numDeriv: d = 0.1)."""
    b = _Blocks(np.asarray(y, float), np.asarray(X, float), np.asarray(Z, float), np.asarray(groups))
    return _satterthwaite(b, np.asarray(theta, float), float(sigma), d=d)[1]


def _central_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.empty(len(x))
    for i in range(len(x)):
        e = np.zeros(len(x))
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _optimise(f, theta0: np.ndarray, bounds: list, diag: list[int]) -> optimize.OptimizeResult:
    """Minimise the profiled criterion from lme4's start and from starts with smaller and
    larger variances (a bounded quasi-Newton run can stop on a bound that is not the optimum);
    the best run is polished from where it stopped, and a diagonal that ended within 1e-8 of
    its bound is put on it when that is no worse (bobyqa ends on bounds exactly)."""
    opts = {"ftol": 1e-15, "gtol": 1e-9, "maxiter": 10000, "maxfun": 100000}
    starts = [theta0]
    for scale in (0.1, 0.3, 3.0):
        t = theta0.copy()
        t[diag] = scale
        starts.append(t)
    t = theta0.copy()
    t[diag[1:]] = 0.05
    starts.append(t)
    best = None
    for t0 in starts:
        r = optimize.minimize(f, t0, jac=lambda t: _central_grad(f, t), method="L-BFGS-B", bounds=bounds, options=opts)
        if np.isfinite(r.fun) and (best is None or r.fun < best.fun):
            best = r
    assert best is not None
    r = optimize.minimize(f, best.x, jac=lambda t: _central_grad(f, t), method="L-BFGS-B", bounds=bounds, options=opts)
    if r.fun <= best.fun:
        best = r
    x = best.x.copy()
    for i in diag:
        if 0 < x[i] < 1e-8:
            x[i] = 0.0
    if f(x) <= best.fun:
        best.x, best.fun = x, f(x)
    return best


def lmer(
    y: np.ndarray,
    X: np.ndarray,
    Z: np.ndarray,
    groups: np.ndarray,
    names: tuple[str, ...],
) -> LmerFit:
    """Fit y ~ X + (Z | groups) by REML and test each fixed effect (Satterthwaite). ``X`` and
    ``Z`` are the fixed and random design matrices (with their intercept columns)."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    Z = np.asarray(Z, dtype=float)
    n, p = X.shape
    q = Z.shape[1]
    groups = np.asarray(groups)
    G = len(pd.unique(groups))
    if not (np.isfinite(y).all() and np.isfinite(X).all() and np.isfinite(Z).all()):
        raise ValueError("y, X and Z must be finite")
    if G < 2:
        raise ValueError(f"the grouping factor needs more than one level, got {G}")
    if n <= q * G:
        raise ValueError(f"{n} observations for {q * G} random effects: lme4 refuses (n must exceed them)")
    if np.linalg.matrix_rank(X) < p:
        raise ValueError("the fixed-effects design matrix is rank deficient")
    b = _Blocks(y, X, Z, groups)
    ntheta = q * (q + 1) // 2
    diag = _diag_index(q)
    theta0 = np.zeros(ntheta)
    theta0[diag] = 1.0
    bounds = [(0.0, None) if i in diag else (None, None) for i in range(ntheta)]
    messages: list[str] = []
    res = _optimise(b.profiled_reml, theta0, bounds, diag)
    theta = res.x
    s = b.solve(theta)
    sigma = float(np.sqrt(s["pwrss"] / (n - p)))
    beta = s["beta"]
    singular = bool(np.any(theta[diag] < SINGULAR_TOL))
    if singular:
        messages.append("boundary (singular) fit: see help('isSingular')")
    # Convergence, as lme4's gradient check: the gradient of the profiled criterion scaled by
    # its Hessian (interior fits), or the gradient in the coordinates off their bound (singular
    # fits). L-BFGS-B's own flag is not used: at tolerances this tight it often ends with an
    # "abnormal" line search at the optimum.
    g = _central_grad(b.profiled_reml, theta)
    if not np.isfinite(res.fun):
        ok = False
        messages.append(f"optimiser: {res.message}")
    elif singular:
        free = [i for i in range(ntheta) if i not in diag or theta[i] >= SINGULAR_TOL]
        gmax = float(np.max(np.abs(g[free]))) if free else 0.0
        ok = gmax < GRAD_TOL
        if not ok:
            messages.append(f"Model failed to converge with max|grad| = {gmax:.3g} (tol = {GRAD_TOL})")
    else:
        try:
            scaled = np.linalg.solve(hessian(b.profiled_reml, theta), g)
        except np.linalg.LinAlgError:
            scaled = g
        gmax = float(np.max(np.abs(scaled)))
        ok = gmax < GRAD_TOL
        if not ok:
            messages.append(f"Model failed to converge with max|grad| = {gmax:.3g} (tol = {GRAD_TOL})")
    # Satterthwaite, as lmerTest
    C, df, evals = _satterthwaite(b, theta, sigma)
    neg, zero = evals < -EIGEN_TOL, np.abs(evals) <= EIGEN_TOL
    if neg.any():
        ok = False
        messages.append(
            f"Model failed to converge with {int(neg.sum())} negative eigenvalue(s) of the deviance Hessian"
        )
    if zero.any():
        messages.append(f"Model may not have converged with {int(zero.sum())} eigenvalue(s) close to zero")
    se = np.sqrt(np.diag(C))
    t = beta / se
    pval = 2 * stats.t.sf(np.abs(t), df)
    return LmerFit(
        names=tuple(names),
        beta=beta,
        se=se,
        df=df,
        t=t,
        p=pval,
        theta=theta,
        sigma=sigma,
        reml=float(b.profiled_reml(theta)),
        singular=singular,
        converged=ok,
        messages=tuple(messages),
    )


def reml_criterion(y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray, theta: np.ndarray) -> float:
    """lme4's profiled REML criterion (``REMLcrit``) at a given θ."""
    b = _Blocks(np.asarray(y, float), np.asarray(X, float), np.asarray(Z, float), np.asarray(groups))
    return float(b.profiled_reml(np.asarray(theta, float)))


def lmer_slope(df: pd.DataFrame, y: str, x: str, group: str) -> LmerFit:
    """``lmer(y ~ x + (x | group), REML = TRUE)``: correlated random intercept and slope."""
    xv = df[x].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(df)), xv])
    return lmer(df[y].to_numpy(dtype=float), X, X, df[group].to_numpy(), ("(Intercept)", x))
