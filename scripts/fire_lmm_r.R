#!/usr/bin/env Rscript
# The paper's years-since-fire bias models in R (lme4 + lmerTest), for cross-checking
# abzflux.fire.fit_bias_models (docs/fire.md). Not a runtime dependency of abzflux.
#
# Usage: Rscript scripts/fire_lmm_r.R RESIDUALS.csv OUT.csv [MAX_YEARS_SINCE_FIRE=18] [tight]
# "tight": lme4's default optimiser (nloptwrap, BOBYQA) with tolerances 1e-14 instead of its
# defaults, to locate the REML optimum more precisely than a default fit does.
# RESIDUALS.csv: columns site_id, month, years_since_fire, residual (observed - predicted).
# Per month, rows with 0 <= years_since_fire <= MAX are fitted with
#   lmer(residual ~ years_since_fire + (years_since_fire | site_id), REML = TRUE)
# and tested with lmerTest (Satterthwaite df). OUT.csv: one row per month and coefficient.
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
max_ysf <- if (length(args) >= 3) as.numeric(args[3]) else 18
ctrl <- if (length(args) >= 4 && args[4] == "tight") {
  lmerControl(optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-14, xtol_rel = 1e-14, ftol_rel = 1e-14, maxeval = 1e6))
} else lmerControl()
r <- read.csv(args[1])
r <- r[!is.na(r$residual) & !is.na(r$years_since_fire) &
       r$years_since_fire >= 0 & r$years_since_fire <= max_ysf, ]
r$site_id <- factor(r$site_id)
out <- list()
for (m in sort(unique(r$month))) {
  g <- droplevels(r[r$month == m, ])
  msgs <- character(0)
  fit <- withCallingHandlers(
    tryCatch(lmer(residual ~ years_since_fire + (years_since_fire | site_id), data = g, REML = TRUE, control = ctrl),
             error = function(e) { msgs <<- c(msgs, conditionMessage(e)); NULL }),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(w) { msgs <<- c(msgs, trimws(conditionMessage(w))); invokeRestart("muffleMessage") })
  if (is.null(fit)) {
    out[[length(out) + 1]] <- data.frame(month = m, term = NA, estimate = NA, se = NA, df = NA, t = NA, p = NA,
      rows = nrow(g), sites = nlevels(g$site_id), singular = NA, theta1 = NA, theta2 = NA, theta3 = NA,
      sigma = NA, reml = NA, messages = paste(msgs, collapse = " | "))
    next
  }
  co <- withCallingHandlers(summary(fit)$coefficients,
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") })
  conv <- fit@optinfo$conv$lme4$messages
  msgs <- unique(c(msgs, conv))
  th <- getME(fit, "theta")
  out[[length(out) + 1]] <- data.frame(month = m, term = rownames(co), estimate = co[, "Estimate"],
    se = co[, "Std. Error"], df = co[, "df"], t = co[, "t value"], p = co[, "Pr(>|t|)"],
    rows = nrow(g), sites = nlevels(g$site_id), singular = isSingular(fit, tol = 1e-4),
    theta1 = th[1], theta2 = th[2], theta3 = th[3], sigma = sigma(fit), reml = REMLcrit(fit),
    messages = paste(msgs, collapse = " | "))
}
res <- do.call(rbind, out)
ver <- sprintf("%s; lme4 %s; lmerTest %s; Matrix %s", R.version.string, packageVersion("lme4"),
               packageVersion("lmerTest"), packageVersion("Matrix"))
res$versions <- ver
write.csv(res, args[2], row.names = FALSE)
cat(ver, "\n")
